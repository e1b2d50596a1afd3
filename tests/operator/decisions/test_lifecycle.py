"""Trainer gang decisions: create, restart, fail, succeed, suspend, deadline, TTL (pure)."""

from __future__ import annotations

from kuberl.operator.decisions import lifecycle
from kuberl.operator.decisions.lifecycle import JobView, PodView, decide


def pod(i, phase="Running", gen=0, ready=True, deleting=False):
    return PodView(f"j-trainer-{i}", i, gen, phase, ready, deleting)


def view(pods=(), **kw):
    base = dict(name="j", replicas=2, backoff_limit=2, restarts=0, suspend=False, finished=False, completion_time=None,
                start_time=None, active_deadline_s=None, ttl_after_finished_s=None, pods=tuple(pods), now=1000.0)
    base.update(kw)
    return JobView(**base)


def test_new_job_creates_the_whole_gang_and_starts_the_clock():
    plan = decide(view())
    assert plan.create == [0, 1] and plan.start_time == 1000.0 and not plan.delete


def test_interrupted_creation_only_creates_what_is_missing():
    plan = decide(view([pod(0)]))
    assert plan.create == [1]


def test_running_gang_counts_ready_pods():
    plan = decide(view([pod(0), pod(1, ready=False)], start_time=900.0))
    assert plan.create == [] and plan.ready == 1 and plan.start_time == 900.0


def test_failed_rank_restarts_the_whole_gang():
    plan = decide(view([pod(0), pod(1, "Failed")]))
    assert plan.restarts == 1 and sorted(plan.delete) == ["j-trainer-0", "j-trainer-1"] and plan.restarted
    assert plan.terminal is None and plan.create == []


def test_a_rank_deleted_mid_run_restarts_the_whole_gang_and_counts():
    """Seen on the real node: without this the operator recreated only the deleted rank
    and never counted a restart (the other ranks of a real gang would have hung)."""
    plan = decide(view([pod(0), pod(1, deleting=True)]))
    assert plan.restarts == 1 and plan.delete == ["j-trainer-0"] and "j-trainer-1 were deleted" in plan.restarted
    assert plan.create == [] and plan.terminal is None
    # A finished rank being removed is no loss; the operator's own deletions are of old generations.
    assert decide(view([pod(0), pod(1, "Succeeded", deleting=True)])).restarts == 0
    assert decide(view([pod(0, gen=0, deleting=True)], restarts=1)).restarts == 1
    evicted = PodView("j-trainer-1", 1, 0, "Running", True, True, disrupted=True)
    plan = decide(view([pod(0), evicted]))
    assert plan.restarts == 1 and plan.disruptions == 1


def test_a_rank_gone_between_two_rounds_after_the_gang_was_ready_restarts_it():
    """A deleted pod whose container stops at once (SIGTERM) can vanish before the next
    round looks: the gang was Ready, so a missing rank was lost, not never created."""
    plan = decide(view([pod(0)], gang_was_ready=True))
    assert plan.restarts == 1 and plan.delete == ["j-trainer-0"] and "j-trainer-1 were deleted" in plan.restarted
    assert decide(view([pod(0)], gang_was_ready=False)).create == [1]  # creation interrupted: just finish it


def test_old_generation_is_deleted_and_names_wait_until_free():
    plan = decide(view([pod(0, gen=0), pod(1, gen=0, deleting=True)], restarts=1))
    assert plan.delete == ["j-trainer-0"] and plan.create == []
    plan = decide(view([pod(0, gen=1)], restarts=1))
    assert plan.create == [1]


def test_backoff_limit_fails_the_job():
    plan = decide(view([pod(0), pod(1, "Failed", gen=2)][1:], restarts=2))
    assert plan.terminal[0] == "Failed" and plan.terminal[1] == "BackoffLimitExceeded" and plan.pause_children


def test_all_succeeded_succeeds():
    plan = decide(view([pod(0, "Succeeded"), pod(1, "Succeeded")]))
    assert plan.terminal[:2] == ("Succeeded", "TrainerCompleted") and plan.pause_children
    assert decide(view([pod(0, "Succeeded"), pod(1)])).terminal is None


def test_suspend_removes_pods_and_resets_the_clock():
    plan = decide(view([pod(0), pod(1)], suspend=True, start_time=10.0))
    assert sorted(plan.delete) == ["j-trainer-0", "j-trainer-1"] and plan.pause_children and plan.start_time is None


def test_deadline():
    plan = decide(view([pod(0), pod(1)], start_time=900.0, active_deadline_s=50))
    assert plan.terminal[1] == "DeadlineExceeded" and len(plan.delete) == 2
    assert decide(view([pod(0), pod(1)], start_time=990.0, active_deadline_s=50)).terminal is None


def test_finished_job_ttl():
    done = [pod(0, "Succeeded"), pod(1, "Succeeded")]
    assert not decide(view(done, finished=True, completion_time=995.0, ttl_after_finished_s=10)).delete_job
    assert decide(view(done, finished=True, completion_time=990.0, ttl_after_finished_s=10)).delete_job
    assert not decide(view(done, finished=True, completion_time=0.0)).delete_job
    plan = decide(view([pod(0, "Failed"), pod(1)], finished=True))
    assert plan.delete == ["j-trainer-1"]


def test_replicas_shrunk_deletes_extra_ranks():
    plan = decide(view([pod(0), pod(1), pod(2)], start_time=1.0))
    assert plan.delete == ["j-trainer-2"]


def _shared_pool(bound: str | None, replicas: int = 4, minimum: int = 1) -> dict:
    return {"metadata": {"name": "shared"}, "spec": {"replicas": replicas, "minReplicas": minimum},
            "status": {"boundJob": bound} if bound else {}}


def test_a_done_job_releases_its_shared_pool_to_min_replicas():
    r = lifecycle.release_shared_pool("j", _shared_pool("j", replicas=4, minimum=2), owned=False, done=True)
    assert r is not None and r.replicas == 2 and r.unbind and "minReplicas=2" in r.message
    # Already at its minimum: only the binding goes; a zero minimum scales to zero.
    r = lifecycle.release_shared_pool("j", _shared_pool("j", replicas=2, minimum=2), owned=False, done=True)
    assert r is not None and r.replicas is None and r.unbind
    assert lifecycle.release_shared_pool("j", _shared_pool("j", minimum=0), owned=False, done=True).replicas == 0


def test_shared_pool_is_left_alone_unless_done_bound_to_us_and_not_owned():
    assert lifecycle.release_shared_pool("j", _shared_pool("j"), owned=False, done=False) is None
    assert lifecycle.release_shared_pool("j", _shared_pool("other"), owned=False, done=True) is None
    assert lifecycle.release_shared_pool("j", _shared_pool(None), owned=False, done=True) is None
    assert lifecycle.release_shared_pool("j", _shared_pool("j"), owned=True, done=True) is None
    assert lifecycle.release_shared_pool("j", None, owned=False, done=True) is None


def test_disrupted_ranks_restart_the_gang_without_using_the_backoff_limit():
    evicted = lifecycle.PodView("j-trainer-1", 1, 2, "Failed", disrupted=True)
    plan = decide(view([pod(0, gen=2), evicted], restarts=2, disruptions=1, backoff_limit=1))
    assert plan.terminal is None and plan.restarts == 3 and plan.disruptions == 2
    assert "not counted against backoffLimit" in plan.restarted and "(1/1 used)" in plan.restarted
    # The same failure without the DisruptionTarget condition is the trainer's own: the limit is spent.
    crashed = lifecycle.PodView("j-trainer-1", 1, 2, "Failed")
    plan = decide(view([pod(0, gen=2), crashed], restarts=2, disruptions=1, backoff_limit=1))
    assert plan.terminal[1] == "BackoffLimitExceeded" and "1 counted gang restart" in plan.terminal[2]
    # A disrupted rank next to a crashed one: the crash counts.
    plan = decide(view([lifecycle.PodView("j-trainer-0", 0, 0, "Failed", disrupted=True), pod(1, "Failed")],
                       backoff_limit=2))
    assert plan.restarts == 1 and plan.disruptions == 0
