"""RLJob conditions, phase, progress and transition events (pure)."""

from __future__ import annotations

from kuberl.operator import status as st


def conds_at(now, **kw):
    defaults = dict(created=(True, "ChildrenCreated", ""), trainer=st.TrainerView(2, 2), rollout=st.RolloutView(False, 1, 1),
                    suspended=False, terminal=None, generation=1)
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
    assert [x["type"] for x in c] == list(st.CONDITION_TYPES)
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
    c = st.job_conditions(c, now=1, **conds_at(1, terminal=(st.FAILED, st.DEADLINE_EXCEEDED, "too long")))
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
    failed = st.job_conditions(after, now=2, **conds_at(2, terminal=(st.FAILED, st.BACKOFF_LIMIT_EXCEEDED, "x")))
    ev = [e for e in st.transition_events(after, failed) if e.reason == st.BACKOFF_LIMIT_EXCEEDED]
    assert ev and ev[0].type == "Warning"


def test_progress_from_kv_state():
    state = {"policy_version": 7, "curriculum_stage": 1, "counters": {"steps": 50, "samples": 3200},
             "metrics": {"reward_mean": 0.61234, "pass_rate": 0.5}}
    out, sample = st.progress(state, max_steps=200, previous=(100.0, 1600), now=110.0)
    assert out["step"] == 50 and out["progressPercent"] == 25 and out["policyVersion"] == 7
    assert out["curriculumStage"] == "1" and out["reward"] == {"mean": "0.6123", "passRate": "0.5"}
    assert out["samplesPerSecond"] == "160" and out["estimatedSecondsRemaining"] == 60
    assert sample == (110.0, 3200)
    out, _ = st.progress(None, max_steps=10, previous=None, now=0)
    assert out == {"maxSteps": 10}


def test_rfc3339_round_trip():
    assert st.parse_rfc3339(st.rfc3339(1_700_000_000)) == 1_700_000_000
