"""The ledger's audit (`trainer.ledger.audit`): the replay rule, and each count it must catch."""

from __future__ import annotations

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
    assert (a.steps, a.slots_issued, a.slots_trained, a.slots_dropped, a.slots_in_flight_at_end) == (2, 4, 2, {"no_signal": 1}, 1)
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
    events = clean_run()[:8] + [{"event": "start", "restored_step": 2}, {"event": "end", "step": 2, "in_flight": [pid(3)]}]
    a = audit(events)
    assert a.zeros() == dict.fromkeys(a.zeros(), 0) and a.steps == 2


def test_resuming_from_an_older_checkpoint_than_committed_loses_steps():
    events = clean_run()[:9] + [{"event": "start", "restored_step": 1}, {"event": "step", "step": 2, "prompts": []},
                                {"event": "checkpoint", "step": 2}, {"event": "end", "step": 2, "in_flight": [pid(3)]}]
    assert audit(events).steps_lost == 1


def test_a_version_loaded_that_the_trainer_never_published_whole_is_counted():
    assert audit(clean_run(), loads=[(1, "d1"), (2, "other")]).partial_versions_loaded == 1


def test_the_ledger_file_round_trips_and_skips_a_torn_last_line(tmp_path):
    ledger = Ledger(str(tmp_path), "inc")
    ledger.record("issued", prompts=[pid(9)])
    with ledger.path.open("a") as f:
        f.write('{"event": "step", "st')
    assert read_ledger(ledger.path) == [{"event": "issued", "incarnation": "inc", "prompts": [pid(9)]}]
    assert prompt_slot(pid(9)) == 9
    Ledger(None, "x").record("start")  # no directory: nothing written, no error
