"""RLJob conditions, phase, progress and transition events (pure)."""

from __future__ import annotations

from kuberl.operator.api.conditions import (
    BACKOFF_LIMIT_EXCEEDED,
    BUFFER_AVAILABLE,
    BUFFER_READY,
    BUFFER_UNAVAILABLE,
    CREATED,
    DEADLINE_EXCEEDED,
    FAILED,
    JOB_CONDITION_TYPES,
    PODS_REJECTED,
    ROLLOUT_READY,
)
from kuberl.operator.decisions import status as st
from kuberl.workloads.buffer.state import JobMetrics, JobState


def conds_at(now, **kw):
    defaults = dict(created=st.Created(True, "ChildrenCreated", ""), trainer=st.TrainerView(2, 2),
                    rollout=st.RolloutView(False, 1, 1),
                    suspended=False, terminal=None, generation=1, buffer=(True, "reachable"))
    defaults.update(kw)
    return defaults


def test_last_transition_time_moves_only_when_status_changes():
    c = st.set_condition([], "Running", True, "Training", now=100)
    c = st.set_condition(c, "Running", True, "Training", "still", now=200)
    assert c[0]["lastTransitionTime"] == st.rfc3339(100) and c[0]["message"] == "still"
    c = st.set_condition(c, "Running", False, "Starting", now=300)
    assert c[0]["lastTransitionTime"] == st.rfc3339(300)


def test_running_job_has_every_condition_and_phase_running():
    c = st.job_conditions([], now=10, **conds_at(10))
    assert [x["type"] for x in c] == list(JOB_CONDITION_TYPES)
    assert st.phase_of(c) == "Running" and all(x["observedGeneration"] == 1 for x in c)


def test_pending_until_ranks_ready_and_engines_ready():
    c = st.job_conditions([], now=0, **conds_at(0, trainer=st.TrainerView(2, 1)))
    assert st.phase_of(c) == "Pending" and st.find(c, "TrainerReady")["message"] == "1/2 trainer pods ready"
    c = st.job_conditions([], now=0, **conds_at(0, rollout=st.RolloutView(False, 0, 2)))
    assert st.phase_of(c) == "Pending" and st.find(c, "RolloutReady")["reason"] == "NoEngineReady"
    c = st.job_conditions([], now=0, **conds_at(0, rollout=st.RolloutView(True)))
    assert st.phase_of(c) == "Running"


def test_suspended_and_terminal_precedence():
    c = st.job_conditions([], now=0, **conds_at(0, suspended=True, trainer=st.TrainerView(2, 0)))
    assert st.phase_of(c) == "Suspended" and not st.is_true(c, "Running")
    c = st.job_conditions(c, now=1, **conds_at(1, terminal=(FAILED, DEADLINE_EXCEEDED, "too long")))
    assert st.phase_of(c) == "Failed" and st.find(c, "Failed")["reason"] == "DeadlineExceeded"
    # A terminal condition is never taken back by a later round.
    c = st.job_conditions(c, now=2, **conds_at(2))
    assert st.phase_of(c) == "Failed" and not st.is_true(c, "Running")


def test_transition_events():
    before = st.job_conditions([], now=0, **conds_at(0, trainer=st.TrainerView(2, 0)))
    after = st.job_conditions(before, now=1, **conds_at(1))
    reasons = {e.reason for e in st.transition_events(before, after)}
    assert {"AllRanksReady", "Training"} <= reasons
    assert st.transition_events(after, after) == []
    failed = st.job_conditions(after, now=2, **conds_at(2, terminal=(FAILED, BACKOFF_LIMIT_EXCEEDED, "x")))
    ev = [e for e in st.transition_events(after, failed) if e.reason == BACKOFF_LIMIT_EXCEEDED]
    assert ev and ev[0].type == "Warning"


def test_buffer_unavailable_is_a_condition_reason_and_a_warning_event():
    # Creating the streams failed: Created and BufferReady both say why, and that is announced at once.
    why = "creating JetStream streams at nats://nowhere:4222 failed: timeout"
    first = st.job_conditions([], now=0,
                              **conds_at(0, created=st.Created(False, BUFFER_UNAVAILABLE, why), buffer=(False, why),
                                                   trainer=st.TrainerView(2, 0)))
    assert st.find(first, CREATED)["reason"] == BUFFER_UNAVAILABLE
    buf = st.find(first, BUFFER_READY)
    assert buf["status"] == "False" and buf["reason"] == BUFFER_UNAVAILABLE and buf["message"] == why
    [ev] = [e for e in st.transition_events([], first) if e.reason == BUFFER_UNAVAILABLE]
    assert ev.type == "Warning" and "nats://nowhere:4222" in ev.message
    assert st.phase_of(first) == "Pending"
    # Not repeated while it stays unavailable; recovery is announced as Normal.
    again = st.job_conditions(first, now=1,
                              **conds_at(1, created=st.Created(False, BUFFER_UNAVAILABLE, why), buffer=(False, why),
                                                      trainer=st.TrainerView(2, 0)))
    assert st.transition_events(first, again) == []
    ok = st.job_conditions(again, now=2, **conds_at(2))
    back = [e for e in st.transition_events(again, ok) if e.reason == BUFFER_AVAILABLE]
    assert back and back[0].type == "Normal" and st.phase_of(ok) == "Running"
    # A running job losing its buffer keeps its phase but gets the condition and the Warning.
    lost = st.job_conditions(ok, now=3, **conds_at(3, buffer=(False, "reading job state failed: no servers available")))
    assert st.phase_of(lost) == "Running" and st.find(lost, BUFFER_READY)["reason"] == BUFFER_UNAVAILABLE
    assert [e.type for e in st.transition_events(ok, lost) if e.reason == BUFFER_UNAVAILABLE] == ["Warning"]
    # Not contacted this round (buffer=None): BufferReady is left as it was.
    kept = st.job_conditions(lost, now=4, **conds_at(4, buffer=None))
    assert st.find(kept, BUFFER_READY)["status"] == "False"


def test_a_healthy_buffer_from_the_start_is_not_announced():
    c = st.job_conditions([], now=0, **conds_at(0))
    assert st.is_true(c, BUFFER_READY)
    assert not [e for e in st.transition_events([], c) if e.reason == BUFFER_AVAILABLE]


def test_progress_from_kv_state():
    state = JobState(policy_version=7, curriculum_stage=1, counters={"steps": 50, "samples": 3200},
                     metrics=JobMetrics(reward_mean=0.61234, pass_rate=0.5))
    out, sample = st.progress(state, max_steps=200, previous=(100.0, 1600), now=110.0)
    assert out["step"] == 50 and out["progressPercent"] == 25 and out["policyVersion"] == 7
    assert out["curriculumStage"] == "1" and out["reward"] == {"mean": "0.6123", "passRate": "0.5"}
    assert out["samplesPerSecond"] == "160" and out["estimatedSecondsRemaining"] == 60
    assert sample == (110.0, 3200)
    named, _ = st.progress(state, max_steps=200, previous=None, now=0, stage_names=("medium", "hard"))
    assert named["curriculumStage"] == "hard"
    out, _ = st.progress(None, max_steps=10, previous=None, now=0)
    assert out == {"maxSteps": 10}


def test_evaluation_reaches_status_in_the_schema_of_the_crd():
    from kuberl.operator.api.rljob import RLJobStatus

    state = JobState(counters={"steps": 100}, evaluation={"step": 100, "policy_version": 101, "metrics": {
        "eval/held/greedy": 0.7, "eval/held/pass@1": 0.575, "eval/held/pass@4": 0.8, "eval/held/reward_mean": 0.575,
        "eval/other/greedy": 0.1}})
    out, _ = st.progress(JobState.from_json(state.to_json()), max_steps=200, previous=None, now=0)
    assert out["evaluation"] == {"step": 100, "policyVersion": 101, "results": [
        {"dataset": "held", "greedy": "0.7", "passAt1": "0.575", "passAtK": "0.8", "k": 4},
        {"dataset": "other", "greedy": "0.1"}]}
    RLJobStatus.model_validate(out)  # the status model the CRD's status schema is generated from


def test_rfc3339_round_trip():
    assert st.parse_rfc3339(st.rfc3339(1_700_000_000)) == 1_700_000_000


def test_counted_ready_never_exceeds_what_is_wanted_now():
    # A just-paused pool: its Deployment still counts the pod on its way out.
    assert st.counted_ready(1, 0) == 0
    assert st.counted_ready(3, 2) == 2
    assert st.counted_ready(1, 4) == 1
    assert st.counted_ready(0, 0) == 0


def test_progress_events_tell_stage_switches_evaluations_and_weight_versions():
    old = {"step": 40, "maxSteps": 100, "policyVersion": 40, "curriculumStage": "medium"}
    new = {"step": 63, "maxSteps": 100, "policyVersion": 63, "curriculumStage": "hard",
           "evaluation": {"step": 60, "policyVersion": 60, "results": [{"dataset": "held-out", "greedy": "0.7",
                                                                        "passAt1": "0.58", "passAtK": "0.8", "k": 4}]}}
    events = {e.reason: e for e in st.progress_events(old, new)}
    assert set(events) == {"StageSwitched", "Evaluated", "WeightsPublished"}
    assert events["StageSwitched"].message == "curriculum stage medium -> hard at step 63"
    assert events["Evaluated"].message == "step 60 (policy version 60): held-out greedy 0.7, pass@1 0.58, pass@4 0.8"
    assert events["WeightsPublished"].message == "policy version 63 published at step 63"
    assert all(e.type == "Normal" for e in events.values())
    # Nothing new: nothing announced; versions only every tenth of maxSteps.
    assert st.progress_events(new, new) == []
    assert st.progress_events({**new, "policyVersion": 61}, {**new, "policyVersion": 69}) == []
    # The first stage is no switch; a job without a stage or evaluation says nothing of them.
    assert st.progress_events({"maxSteps": 100},
                              {"step": 1, "maxSteps": 100, "policyVersion": 1, "curriculumStage": "all"}) == []


def test_refused_pods_are_a_reason_and_a_warning_once_per_message():
    from kuberl.operator.decisions import status as st

    refused = {"replicas": 0, "conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                                "message": 'pods "p" is forbidden: exceeded quota: no-pods'}]}
    new = st.workload_status({}, refused, 2, what="rollout pods", reasons=("EnginesReady", "NoEngineReady"),
                             ready_if_empty=False, now=1.0, generation=1)
    ready = st.find(new["conditions"], "Ready")
    assert ready["reason"] == PODS_REJECTED and "exceeded quota: no-pods" in ready["message"]
    events = st.rejection_events(None, new["conditions"])
    assert [(e.type, e.reason) for e in events] == [("Warning", "PodsRejected")]
    assert st.rejection_events(new["conditions"], new["conditions"]) == []  # no repeat for the same refusal
    healthy = st.workload_status({}, {"readyReplicas": 2, "replicas": 2}, 2, what="rollout pods",
                                 reasons=("EnginesReady", "NoEngineReady"), ready_if_empty=False, now=1.0, generation=1)
    assert st.find(healthy["conditions"], "Ready")["reason"] == "EnginesReady"
    conds = st.job_conditions(None, created=st.Created(True, "ChildrenCreated", ""), trainer=st.TrainerView(1, 1),
                              rollout=st.RolloutView(False, 0, 2, rejected="RolloutPool p: refused"), suspended=False,
                              terminal=None, now=1.0, generation=1)
    assert st.find(conds, ROLLOUT_READY)["reason"] == PODS_REJECTED


def test_pool_policy_versions_are_what_its_ready_pods_reported():
    reported = {"pool-a": 7, "pool-b": 9, "gone": 3, "pool-c": 9}
    assert st.loaded_versions(reported, ["pool-a", "pool-b", "pool-c", "pool-d"]) == [7, 9]
    assert st.loaded_versions(reported, []) == [] and st.loaded_versions({}, ["pool-a"]) == []
