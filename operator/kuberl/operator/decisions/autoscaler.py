"""The RolloutPool autoscaling policy: signals in, a replica count and its reason out. Pure.

Signals and what "more replicas" does to them:

* promptBacklog — prompt groups waiting in the job's prompts stream. More engines drain
  it faster, so aim for `target` waiting groups per replica: ceil(pending / target).
* trajectoryBacklog — trajectories waiting for the trainer. More engines fill it faster;
  a backlog above `target` per replica means the trainer is the bottleneck (scale down),
  below it the trainer starves (scale up): current * target*current / backlog.
* trainerIdle — percent of time the trainer waited for samples. Idle above `target`
  means rollout is too slow: current * idle / target.

Then the guards, in order: [min, max]; at most maxScaleUpStep added; at most
maxScaleDownPercent of the current count removed (always allowing one, so small pools can
shrink); nothing at all within cooldownSeconds of the last change — no flapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Signals:
    pending_prompts: int | None = None
    trajectory_backlog: int | None = None
    trainer_idle_percent: float | None = None


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    signal: str = "promptBacklog"
    target: float = 4.0
    cooldown_s: float = 60.0
    max_scale_up_step: int = 4
    max_scale_down_percent: int = 25

    @classmethod
    def from_spec(cls, spec) -> Policy:
        """From a RolloutPoolSpec (kuberl.operator.api)."""
        a = spec.autoscaling
        return cls(spec.min_replicas, spec.max_replicas, a.signal, a.target, a.cooldown_seconds, a.max_scale_up_step,
                   a.max_scale_down_percent)


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str  # one CamelCase word, usable as an Event reason
    message: str

    def changes(self, current: int) -> bool:
        return self.replicas != current


def max_scale_down(current: int, percent: int) -> int:
    """Replicas one step may remove: percent of current, rounded down, but at least one."""
    return max(1, current * percent // 100)


def wanted(current: int, signals: Signals, policy: Policy) -> tuple[int | None, str]:
    """The replica count the signal asks for, unbounded; None when the signal is missing."""
    target = policy.target
    if policy.signal == "promptBacklog":
        if signals.pending_prompts is None:
            return None, "pending prompts unknown"
        return math.ceil(
            signals.pending_prompts / target
        ), f"{signals.pending_prompts} prompt groups pending, target {target:g} per replica"
    if policy.signal == "trajectoryBacklog":
        backlog = signals.trajectory_backlog
        if backlog is None:
            return None, "trajectory backlog unknown"
        base = max(current, 1)
        if backlog == 0:
            return base + policy.max_scale_up_step, "trainer has no trajectories waiting"
        return math.ceil(
            base * (target * base) / backlog
        ), f"{backlog} trajectories waiting, target {target:g} per replica"
    if policy.signal == "trainerIdle":
        idle = signals.trainer_idle_percent
        if idle is None:
            return None, "trainer idle time unknown"
        return math.ceil(max(current, 1) * idle / target), f"trainer idle {idle:.0f}%, target {target:g}%"
    return None, f"unknown signal {policy.signal}"


def decide(current: int, signals: Signals, policy: Policy, *, last_scale_time: float | None, now: float) -> Decision:
    raw, why = wanted(current, signals, policy)
    if raw is None:
        # Still keep the bounds: a pool scaled outside them by hand comes back in.
        bounded = min(max(current, policy.min_replicas), policy.max_replicas)
        if bounded != current:
            return Decision(bounded, "OutOfBounds",
                            f"{current} replicas outside [{policy.min_replicas}, {policy.max_replicas}]; {why}")
        return Decision(current, "NoSignal", why)
    desired = min(max(raw, policy.min_replicas), policy.max_replicas)
    notes = [why]
    if desired != raw:
        notes.append(f"bounded to [{policy.min_replicas}, {policy.max_replicas}]")
    if desired > current and desired - current > policy.max_scale_up_step:
        desired = current + policy.max_scale_up_step
        notes.append(f"scale-up step capped at {policy.max_scale_up_step}")
    if desired < current:
        floor = current - max_scale_down(current, policy.max_scale_down_percent)
        if desired < floor:
            desired = floor
            notes.append(f"scale-down capped at {policy.max_scale_down_percent}%")
    # The bounds beat the step caps: a pool outside [min, max] goes straight back in.
    desired = min(max(desired, policy.min_replicas), policy.max_replicas)
    if desired == current:
        return Decision(current, "Steady", "; ".join(notes))
    in_bounds = policy.min_replicas <= current <= policy.max_replicas
    if in_bounds and last_scale_time is not None and now - last_scale_time < policy.cooldown_s:
        left = policy.cooldown_s - (now - last_scale_time)
        return Decision(
            current,
            "Cooldown",
            f"would scale {current} -> {desired} but cooling down for {left:.0f}s more; " + "; ".join(notes),
        )
    return Decision(desired, "ScaledUp" if desired > current else "ScaledDown",
                    f"{current} -> {desired}: " + "; ".join(notes))


def evaluation_due(spec, paused: bool, last_eval: float | None, now: float) -> bool:
    """Whether a pool's autoscaler looks at its signals this tick (`spec`: a RolloutPoolSpec).
    Not when autoscaling is off or the pool is paused; never for a pinned pool (min = max =
    replicas: no signal could move it, so none is read from the buffer); otherwise once per
    autoscaling.intervalSeconds."""
    if not spec.autoscaling.enabled or paused:
        return False
    if spec.min_replicas == spec.max_replicas == spec.replicas:
        return False
    return round_due(last_eval, now, spec.autoscaling.interval_seconds)


def round_due(last: float | None, now: float, interval_s: float) -> bool:
    """Whether a periodic look is due: never done, or `interval_s` passed since the last one
    (a sweeper tick a few milliseconds early still counts)."""
    return last is None or now - last >= interval_s - 0.05
