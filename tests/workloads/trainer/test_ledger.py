"""The ledger's audit (`trainer.ledger.audit`): the replay rule, and each count it must catch."""

from __future__ import annotations

import time

from kuberl.workloads.observe.uploads import RunFiles
from kuberl.workloads.trainer.ledger import Ledger, audit, prompt_slot, read_ledger


def pid(slot: int, inc: str = "a") -> str:
    return f"sum-{slot % 7}@{inc}.{slot}"


def clean_run() -> list[dict]:
    """Two steps, a checkpoint after each, one prompt dropped for no signal, one in flight at the end."""
    return [
        {"event": "start", "restored_step": 0},
        {"event": "published", "version": 1, "digest": "d1"},
        {"event": "issued", "prompts": [pid(0), pid(1), pid(2), pid(3)]},
        {"event": "dropped", "prompt": pid(2), "why": "no_signal"},
        {"event": "step", "step": 1, "prompts": [pid(0)]},
        {"event": "published", "version": 2, "digest": "d2"},
        {"event": "checkpoint", "step": 1},
        {"event": "step", "step": 2, "prompts": [pid(1)]},
        {"event": "checkpoint", "step": 2},
        {"event": "end", "step": 2, "in_flight": [pid(3)]},
    ]


def test_a_clean_run_has_all_zeros_and_accounts_for_every_slot():
    a = audit(clean_run(), loads=[(1, "d1"), (2, "d2")])
    assert a.zeros() == dict.fromkeys(a.zeros(), 0)
    assert (a.steps, a.slots_issued, a.slots_trained, a.slots_dropped,
            a.slots_in_flight_at_end) == (2, 4, 2, {"no_signal": 1}, 1)
    assert a.finished and a.versions_loaded == 2 and a.restarts == 0


def test_a_prompt_neither_trained_dropped_nor_in_flight_is_lost():
    events = clean_run()
    events[-1] = {"event": "end", "step": 2, "in_flight": []}
    assert audit(events).slots_lost == 1


def test_a_slot_trained_in_two_steps_is_counted():
    events = clean_run()
    events[7] = {"event": "step", "step": 2, "prompts": [pid(1), pid(0)]}
    assert audit(events).slots_trained_twice == 1


def test_a_restart_rolls_back_what_came_after_its_checkpoint():
    """Step 2 and slots 4-5 after the checkpoint at step 1 are rolled back: the new incarnation
    issues slots 4-5 again (new ids) and trains step 2 again; nothing is repeated or lost."""
    events = clean_run()[:7] + [
        {"event": "issued", "prompts": [pid(4), pid(5)]},
        {"event": "step", "step": 2, "prompts": [pid(1), pid(4)]},
        {"event": "start", "restored_step": 1},
        {"event": "issued", "prompts": [pid(1), pid(3)], "reissue": True},
        {"event": "issued", "prompts": [pid(4, "b"), pid(5, "b")]},
        {"event": "step", "step": 2, "prompts": [pid(1), pid(4, "b")]},
        {"event": "checkpoint", "step": 2},
        {"event": "end", "step": 2, "in_flight": [pid(3), pid(5, "b")]},
    ]
    a = audit(events)
    assert a.zeros() == dict.fromkeys(a.zeros(), 0), a
    assert (a.restarts, a.steps_redone, a.reissued, a.steps) == (1, 1, 2, 2)


def test_a_checkpoint_written_but_not_recorded_counts_as_committed():
    """Killed between the checkpoint's upload and its ledger line: the restart resumes from it."""
    events = clean_run()[:8] + [{"event": "start", "restored_step": 2},
                                {"event": "end", "step": 2, "in_flight": [pid(3)]}]
    a = audit(events)
    assert a.zeros() == dict.fromkeys(a.zeros(), 0) and a.steps == 2


def test_resuming_from_an_older_checkpoint_than_committed_loses_steps():
    events = clean_run()[:9] + [{"event": "start", "restored_step": 1}, {"event": "step", "step": 2, "prompts": []},
                                {"event": "checkpoint", "step": 2}, {"event": "end", "step": 2, "in_flight": [pid(3)]}]
    assert audit(events).steps_lost == 1


def test_a_version_loaded_that_the_trainer_never_published_whole_is_counted():
    assert audit(clean_run(), loads=[(1, "d1"), (2, "other")]).partial_versions_loaded == 1


def test_each_incarnation_writes_a_segment_and_the_ledger_reads_them_in_start_order(tmp_path):
    """A torn last line (its writer SIGKILLed mid-write) is skipped; the next incarnation's
    segment is a file of its own, so its first event is never glued to the torn one."""
    first = Ledger(tmp_path, "inc")
    first.record("issued", prompts=[pid(9)])
    with first.path.open("a") as f:
        f.write('{"event": "step", "st')
    time.sleep(0.002)  # segments are named by their start in milliseconds
    second = Ledger(tmp_path, "next")
    second.record("start", restored_step=0)
    assert first.path != second.path and first.path.parent == tmp_path / "ledger"
    assert read_ledger(tmp_path) == [{"event": "issued", "incarnation": "inc", "prompts": [pid(9)]},
                                     {"event": "start", "incarnation": "next", "restored_step": 0}]
    assert prompt_slot(pid(9)) == 9


def test_a_segment_is_mirrored_to_the_run_files_location_and_read_back_from_there(tmp_path):
    """In a cluster the output directory is an emptyDir: the segment goes to the store."""
    store = RunFiles(f"file://{tmp_path / 'store' / 'run'}")
    ledger = Ledger(tmp_path / "pod", "inc", mirror=store)
    ledger.record("start", restored_step=0)
    ledger.mirror()
    ledger.record("step", step=1, prompts=[])  # after the last mirror: not in the store yet
    assert [e["event"] for e in read_ledger(store)] == ["start"]
    ledger.mirror()
    assert [e["event"] for e in read_ledger(store)] == ["start", "step"]
    assert read_ledger(tmp_path / "elsewhere") == []


def test_a_version_published_after_the_segments_last_copy_still_counts_as_published(tmp_path):
    """A trainer pod killed after publishing v2 but before its next checkpoint: its segment's
    copy ends before v2, an agent loaded v2, and the restarted trainer publishes another v2.
    The per-version record copied out before the announcement keeps the load accounted for."""
    store = RunFiles(str(tmp_path / "store"))
    killed = Ledger(tmp_path / "pod-1", "a", mirror=store)
    killed.record("start", restored_step=0)
    killed.mirror_published(killed.record("published", version=1, digest="d1"))
    killed.record("checkpoint", step=1)
    killed.mirror()
    killed.mirror_published(killed.record("published", version=2, digest="d2-killed"))  # never in the segment's copy
    time.sleep(0.002)
    resumed = Ledger(tmp_path / "pod-2", "b", mirror=store)
    resumed.record("start", restored_step=1)
    resumed.mirror_published(resumed.record("published", version=2, digest="d2"))
    resumed.record("end", step=1, in_flight=[])
    resumed.mirror()
    events = read_ledger(store)
    assert sum(e["event"] == "published" for e in events) == 3  # each once: the copies are not doubled
    loads = [(1, "d1"), (2, "d2-killed"), (2, "d2")]
    assert audit(events, loads).partial_versions_loaded == 0
    assert audit(events, [(2, "never")]).partial_versions_loaded == 1


def test_a_segment_is_copied_in_parts_so_a_long_run_never_copies_its_history_again(tmp_path, monkeypatch):
    from kuberl.workloads.trainer import ledger as ledger_module

    monkeypatch.setattr(ledger_module, "EVENTS_PER_PART", 4)
    store = RunFiles(str(tmp_path / "store"))
    copied: list[str] = []
    put = store.put_file
    monkeypatch.setattr(store, "put_file", lambda path, name: (copied.append(name), put(path, name)))
    ledger = Ledger(tmp_path / "pod", "inc", mirror=store)
    ledger.record("start", restored_step=0)
    for step in range(1, 10):
        ledger.record("step", step=step, prompts=[])
        if step % 3 == 0:
            ledger.mirror()  # a checkpoint's copy: the parts with new events only
    ledger.record("end", step=9, in_flight=[])
    ledger.mirror()
    # Events 0-3 in part 0, 4-7 in part 1, 8-10 in part 2; each copy sends only the parts it changed.
    assert copied == [f"ledger/{ledger.part_name(p)}" for p in (0, 1, 1, 2, 2)]
    assert [e.get("step") for e in read_ledger(store)] == [None, *range(1, 10), 9]
