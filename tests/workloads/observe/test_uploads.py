"""Run files copied out of the pod: only what changed, retried after a failure."""

from __future__ import annotations

import os

from kuberl.workloads.observe.uploads import RunFileSync


def test_sync_copies_new_and_changed_files_only(tmp_path):
    out, dest = tmp_path / "out", tmp_path / "store" / "run"
    (out / "tensorboard").mkdir(parents=True)
    (out / "logs").mkdir()
    (out / "tensorboard" / "events.1").write_bytes(b"a")
    (out / "logs" / "trainer.log").write_text("not a run file")
    sync = RunFileSync(f"file://{dest}", out, ("tensorboard", "wandb"))
    assert sync.sync() == 1
    assert (dest / "tensorboard" / "events.1").read_bytes() == b"a" and not (dest / "logs").exists()
    assert sync.sync() == 0
    (out / "tensorboard" / "events.1").write_bytes(b"ab")
    (out / "wandb" / "offline-run-x").mkdir(parents=True)
    (out / "wandb" / "offline-run-x" / "run-x.wandb").write_bytes(b"w")
    assert sync.sync() == 2
    assert (dest / "tensorboard" / "events.1").read_bytes() == b"ab"
    assert (dest / "wandb" / "offline-run-x" / "run-x.wandb").exists()


def test_a_failed_copy_is_retried_at_the_next_sync(tmp_path):
    out = tmp_path / "out"
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "events.1").write_bytes(b"a")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory should be")
    sync = RunFileSync(str(blocked), out, ("tensorboard",))
    assert sync.sync() == 0  # logged, not raised
    os.remove(blocked)
    assert sync.sync() == 1 and (blocked / "tensorboard" / "events.1").exists()
