"""The RolloutPool autoscaling policy (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as s

from kuberl.operator.api.rolloutpool import RolloutPoolSpec
from kuberl.operator.decisions.autoscaler import Policy, Signals, decide, evaluation_due, max_scale_down, round_due

P = Policy(min_replicas=1, max_replicas=12, target=8, cooldown_s=60, max_scale_up_step=4, max_scale_down_percent=25)


def test_backlog_scales_up_by_at_most_the_step():
    d = decide(2, Signals(pending_prompts=400), P, last_scale_time=None, now=1000)
    assert d.replicas == 6 and d.reason == "ScaledUp" and "capped" in d.message


def test_never_above_max():
    d = decide(11, Signals(pending_prompts=10_000), P, last_scale_time=None, now=1000)
    assert d.replicas == 12


def test_empty_backlog_scales_down_by_at_most_the_percent_but_at_least_one():
    assert decide(12, Signals(pending_prompts=0), P, last_scale_time=None, now=0).replicas == 9
    assert decide(3, Signals(pending_prompts=0), P, last_scale_time=None, now=0).replicas == 2
    assert decide(1, Signals(pending_prompts=0), P, last_scale_time=None, now=0).reason == "Steady"
    assert max_scale_down(3, 25) == 1 and max_scale_down(100, 25) == 25


def test_cooldown_holds():
    d = decide(2, Signals(pending_prompts=400), P, last_scale_time=990, now=1000)
    assert d.replicas == 2 and d.reason == "Cooldown"
    assert decide(2, Signals(pending_prompts=400), P, last_scale_time=900, now=1000).replicas == 6


def test_missing_signal_holds_but_restores_bounds():
    assert decide(3, Signals(), P, last_scale_time=None, now=0).reason == "NoSignal"
    d = decide(20, Signals(), P, last_scale_time=999, now=1000)
    assert d.replicas == 12 and d.reason == "OutOfBounds"


def test_out_of_bounds_goes_straight_back_even_in_cooldown():
    d = decide(0, Signals(pending_prompts=0), P, last_scale_time=999, now=1000)
    assert d.replicas == 1


def test_trajectory_backlog_and_trainer_idle_signals():
    traj = Policy(1, 10, signal="trajectoryBacklog", target=4, cooldown_s=0)
    assert decide(2, Signals(trajectory_backlog=80), traj, last_scale_time=None,
                  now=0).replicas == 1  # trainer is the bottleneck
    assert decide(2, Signals(trajectory_backlog=0), traj, last_scale_time=None, now=0).replicas == 6
    idle = Policy(1, 10, signal="trainerIdle", target=10, cooldown_s=0)
    assert decide(2, Signals(trainer_idle_percent=40), idle, last_scale_time=None, now=0).replicas == 6
    assert decide(4, Signals(trainer_idle_percent=10), idle, last_scale_time=None, now=0).reason == "Steady"


@given(current=s.integers(0, 50), pending=s.integers(0, 10_000), lo=s.integers(0, 10), span=s.integers(0, 30),
       up=s.integers(1, 8), down=s.integers(1, 100))
def test_guards_hold_for_any_input(current, pending, lo, span, up, down):
    p = Policy(lo, max(lo + span, 1), target=4, cooldown_s=0, max_scale_up_step=up, max_scale_down_percent=down)
    d = decide(current, Signals(pending_prompts=pending), p, last_scale_time=None, now=0)
    assert p.min_replicas <= d.replicas <= p.max_replicas
    if p.min_replicas <= current <= p.max_replicas:
        assert d.replicas - current <= up
        assert current - d.replicas <= max_scale_down(current, down)


def _pool(**spec) -> RolloutPoolSpec:
    return RolloutPoolSpec.model_validate(spec)


def test_evaluation_is_due_once_per_interval_and_never_for_a_pinned_off_or_paused_pool():
    elastic = _pool(replicas=2, minReplicas=1, maxReplicas=8, autoscaling={"intervalSeconds": 15})
    assert evaluation_due(elastic, False, None, now=100)
    assert not evaluation_due(elastic, False, 90, now=100)
    assert evaluation_due(elastic, False, 85.01, now=100)  # a tick a hair early still counts
    assert not evaluation_due(elastic, True, None, now=100)
    assert not evaluation_due(_pool(replicas=4, minReplicas=4, maxReplicas=4), False, None, now=100)
    assert not evaluation_due(_pool(replicas=2, minReplicas=1, maxReplicas=8, autoscaling={"enabled": False}), False,
                              None, now=100)


def test_a_round_is_due_when_never_done_or_after_its_interval():
    assert round_due(None, 5, 10) and round_due(0, 9.96, 10) and not round_due(0, 9.9, 10)
