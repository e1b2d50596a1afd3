"""Trainer checkpoints load safely: a planted pickle is refused, the trainer's own state round-trips."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch

from kuberl.workloads.trainer.checkpoints import LATEST, CheckpointStore, UnsafeCheckpointError
from tests.workloads.trainer.test_workloads_local import _step, _tiny_trainer

torch.set_num_threads(1)


class _RunsCode:
    """What an attacker with write access to the checkpoint prefix would plant."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _planted_blob(marker) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(2)}, "progress": _RunsCode(str(marker))}, buf)
    return buf.getvalue()


def _plant(store: CheckpointStore, blob: bytes, name: str = "step-00000009.pt") -> None:
    # Raw writes, as someone with access to the prefix (not through save()) would make them.
    store._put(name, blob)
    store._put(LATEST, json.dumps({"latest": name, "history": [name]}).encode())


def test_the_planted_blob_would_run_code_when_loaded_unsafely(tmp_path):
    """The control: the payload the refusal tests use really does run code under weights_only=False."""
    marker = tmp_path / "pwned"
    torch.load(io.BytesIO(_planted_blob(marker)), weights_only=False)
    assert marker.exists()


def test_a_planted_code_running_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    store = CheckpointStore(str(tmp_path / "ckpt"))
    store.save(3, {"model": {"w": torch.ones(2)}})
    _plant(store, _planted_blob(marker))
    with pytest.raises(UnsafeCheckpointError) as err:
        store.load_latest()
    msg = str(err.value)
    assert f"{tmp_path / 'ckpt'}/step-00000009.pt" in msg and "refused as unsafe" in msg
    assert "system" in msg  # names what was refused, not torch's advice to load it unsafely
    assert "weights_only` set to `False`" not in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert not marker.exists()


def test_the_trainer_refuses_to_resume_from_a_planted_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    tr = _tiny_trainer(tmp_path, checkpoint={"uri": str(tmp_path / "ckpt")})
    _plant(tr.ckpt, _planted_blob(marker))
    with pytest.raises(UnsafeCheckpointError, match="refused as unsafe"):
        tr.restore_or_init()
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../outside.pt", "/etc/passwd", "step-1.pt/../../x.pt", "sub/step-00000001.pt", 7])
def test_an_index_naming_anything_but_a_checkpoint_blob_is_refused(tmp_path, name):
    outside = tmp_path / "outside.pt"
    torch.save({"model": {}}, outside)
    store = CheckpointStore(str(tmp_path / "ckpt"))
    store._put(LATEST, json.dumps({"latest": name, "history": [name]}).encode())
    with pytest.raises(UnsafeCheckpointError, match=r"not a checkpoint name .*refused as unsafe"):
        store.load_latest()
    # Nor can the history make save() delete a file outside the prefix.
    store._put(LATEST, json.dumps({"latest": "step-00000001.pt", "history": [name, "step-00000001.pt"]}).encode())
    with pytest.raises(UnsafeCheckpointError):
        store.save(2, {"model": {}})
    assert outside.exists()


def test_save_refuses_state_the_safe_loader_could_not_read_back(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"), keep=2)
    store.save(1, {"step": 1})
    with pytest.raises(UnsafeCheckpointError, match=r"step 2 .*numpy"):
        store.save(2, {"step": 2, "rates": np.array([0.5])})
    assert store.load_latest() == {"step": 1}  # the previous checkpoint stays in force
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [LATEST, "step-00000001.pt"]


def test_the_trainers_real_state_round_trips_through_the_safe_loader(tmp_path):
    """What Trainer.checkpoint saves (model, AdamW state, reference policy, progress with the
    curriculum, RNG state, the decoupled loop's extras) resumes exactly."""
    ckpt = {"uri": str(tmp_path / "ckpt"), "keep": 2}
    tr = _tiny_trainer(tmp_path, algorithm={"klCoef": 0.1}, checkpoint=ckpt)
    tr.init_fresh()
    _step(tr, pass_all=False)
    _step(tr, pass_all=True)
    extra = {"consumer": {"committed": ["s1", "s2"], "stats": {"delivered": 4}}, "answered": ["p1"],
             "in_flight": [{"prompt_id": "p2", "data": {"prompt": "1+2=", "answer": "3", "difficulty": 1.0},
                            "n_samples": 4, "stage": 0, "attempt": 1}]}
    tr.checkpoint(extra)
    rng = torch.get_rng_state()

    again = _tiny_trainer(tmp_path, algorithm={"klCoef": 0.1}, checkpoint=ckpt)
    assert again.restore_or_init() == extra
    assert again.progress.step == tr.progress.step == 2 and again.progress.resumed_from == 2
    assert again.progress.curriculum.recent_pass_rates == tr.progress.curriculum.recent_pass_rates
    for a, b in zip(tr.backend.model.parameters(), again.backend.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(tr.backend.reference.model.parameters(), again.backend.reference.model.parameters(), strict=True):
        assert torch.equal(a, b)
    saved, restored = tr.backend.optimizer.state_dict(), again.backend.optimizer.state_dict()
    assert restored["param_groups"] == saved["param_groups"]
    for k, st in saved["state"].items():
        assert all(torch.equal(v, restored["state"][k][n]) for n, v in st.items() if torch.is_tensor(v))
    assert torch.equal(torch.get_rng_state(), rng)
    assert again.prompts.issued == tr.prompts.issued


@pytest.mark.servers
def test_a_planted_checkpoint_on_s3_is_refused(tmp_path, s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    uri = f"s3://{s3_bucket}/team-a/job-1/checkpoints"
    store = CheckpointStore(uri, s3_server.endpoint)
    store.save(1, {"model": {"w": torch.arange(3.0)}})
    assert torch.equal(store.load_latest()["model"]["w"], torch.arange(3.0))
    marker = tmp_path / "pwned"
    _plant(store, _planted_blob(marker))
    with pytest.raises(UnsafeCheckpointError, match=f"{uri}/step-00000009.pt refused as unsafe"):
        store.load_latest()
    assert not marker.exists()
