"""RLJob status as data: Conditions, the phase derived from them, progress, and the Events
a change of conditions should produce. Pure: callers pass the time and the observations.

Conditions follow the Kubernetes convention (type, status, reason, message,
lastTransitionTime, observedGeneration); lastTransitionTime moves only when status
changes, so `kubectl describe` shows when something really happened.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

from kuberl.workloads.buffer.state import JobState

from kuberl.operator.api.conditions import (
    ALL_RANKS_READY,
    BUFFER_AVAILABLE,
    BUFFER_READY,
    BUFFER_UNAVAILABLE,
    CHILD_REJECTED,
    COLOCATED,
    CREATED,
    ENGINES_READY,
    FAILED,
    JOB_CONDITION_TYPES,
    JOB_FINISHED,
    NO_ENGINE_READY,
    NOT_FAILED,
    NOT_FINISHED,
    NOT_SUSPENDED,
    PODS_REJECTED,
    RANKS_NOT_READY,
    READY,
    ROLLOUT_READY,
    RUNNING,
    STARTING,
    SUCCEEDED,
    SUSPENDED,
    SUSPENDED_BY_USER,
    TRAINER_READY,
    TRAINING,
)

# Conditions whose False is news even when it is their first value: announced as Warnings.
WARN_WHEN_FALSE = frozenset({BUFFER_READY})
# The API server refused a child: the user must change something, so these are shown as
# conditions and Warning Events, not retried silently.
REJECTION_REASONS = frozenset({CHILD_REJECTED, PODS_REJECTED})


def rfc3339(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str | None) -> float | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for c in conditions or []:
        if c.get("type") == type_:
            return c
    return None


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    c = find(conditions, type_)
    return c is not None and c.get("status") == "True"


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str = "",
    *,
    now: float,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """A new list with `type_` set; lastTransitionTime is kept unless the status changes."""
    status_str = status if isinstance(status, str) else ("True" if status else "False")
    old = find(conditions, type_)
    transition = (
        old["lastTransitionTime"]
        if old and old.get("status") == status_str and old.get("lastTransitionTime")
        else rfc3339(now)
    )
    new = {"type": type_, "status": status_str, "reason": reason, "message": message, "lastTransitionTime": transition}
    if generation is not None:
        new["observedGeneration"] = generation
    out = [c for c in conditions or [] if c.get("type") != type_]
    out.append(new)
    order = {t: i for i, t in enumerate(JOB_CONDITION_TYPES)}
    return sorted(out, key=lambda c: order.get(c["type"], len(order)))


def phase_of(conditions: list[dict[str, Any]] | None) -> str:
    """The one-word summary, in order of precedence: terminal states win over everything."""
    for type_, phase in ((FAILED, "Failed"), (SUCCEEDED, "Succeeded"), (SUSPENDED, "Suspended"), (RUNNING, "Running")):
        if is_true(conditions, type_):
            return phase
    return "Pending"


def is_finished(conditions: list[dict[str, Any]] | None) -> bool:
    return is_true(conditions, SUCCEEDED) or is_true(conditions, FAILED)


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the object."""

    type: str  # Normal | Warning
    reason: str
    message: str


def transition_events(old: list[dict[str, Any]] | None, new: list[dict[str, Any]] | None) -> list[Event]:
    """One Event per condition whose status changed (or that appeared as True)."""
    events = []
    for cond in new or []:
        before = find(old, cond["type"])
        if before is not None and before.get("status") == cond["status"]:
            continue
        bad_news = cond["type"] in WARN_WHEN_FALSE and cond["status"] == "False"
        if before is None and cond["status"] != "True" and not bad_news:
            continue  # conditions start False; only announce what happened
        if before is None and cond["type"] in WARN_WHEN_FALSE and not bad_news:
            continue  # healthy from the start: nothing happened
        warning = (cond["type"] == FAILED and cond["status"] == "True") or bad_news
        verb = "" if cond["status"] == "True" else "not "
        text = f"{cond['type']}: {verb}{cond['type'][0].lower() + cond['type'][1:]}"
        if cond.get("message"):
            text = f"{text} ({cond['message']})"
        events.append(Event("Warning" if warning else "Normal", cond.get("reason") or cond["type"], text))
    return events


def rejection_events(old: list[dict[str, Any]] | None, new: list[dict[str, Any]] | None) -> list[Event]:
    """A Warning whenever a condition newly says a child was refused, or is refused for a new reason
    (`transition_events` sees only status changes, and these stay False while the reason changes)."""
    events = []
    for cond in new or []:
        if cond.get("reason") not in REJECTION_REASONS:
            continue
        before = find(old, cond["type"]) or {}
        if before.get("reason") == cond["reason"] and before.get("message") == cond.get("message"):
            continue
        events.append(Event("Warning", cond["reason"], f"{cond['type']}: {cond.get('message', '')}"))
    return events


def replica_failure(deployment_status: dict[str, Any]) -> str | None:
    """Why a Deployment's ReplicaSet cannot create pods (its ReplicaFailure condition), e.g. a
    Pod Security refusal or an exceeded quota; None when it can."""
    for cond in deployment_status.get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return cond.get("message") or cond.get("reason") or "ReplicaFailure"
    return None


@dataclass(frozen=True)
class TrainerView:
    """What the conditions need to know about the current trainer gang."""

    replicas: int
    ready: int  # pods of the current generation that are Running and Ready


def counted_ready(observed_ready: int, desired: int) -> int:
    """Ready pods a Deployment's parent reports: never more than it wants right now.

    Right after a scale-down (a pause) the Deployment's status still counts the pods on
    their way out; reporting them would let a resumed job look Running before its
    engines are back.
    """
    return max(0, min(observed_ready, desired))


def workload_status(old: dict[str, Any], deployment_status: dict[str, Any], desired: int, *, what: str,
                    reasons: tuple[str, str], ready_if_empty: bool, now: float, generation: int | None) -> dict[str,
                                                                                                                Any]:
    """The status of a Deployment-backed object (a RolloutPool, an AgentEnv): pod counts and
    its Ready condition. ``reasons``: (ready, not ready); ``ready_if_empty``: whether wanting
    no pods counts as ready."""
    ready_count = counted_ready(deployment_status.get("readyReplicas", 0), desired)
    ready = ready_count > 0 or ready_if_empty
    reason, message = (reasons[0] if ready else reasons[1]), f"{ready_count}/{desired} {what} ready"
    failure = replica_failure(deployment_status) if desired > ready_count else None
    if failure is not None:
        reason, message = PODS_REJECTED, f"{message}; the API server refuses to create them: {failure}"
    conds = set_condition(old.get("conditions"), READY, ready, reason, message, now=now, generation=generation)
    return {
        "replicas": deployment_status.get("replicas", 0),
        "readyReplicas": ready_count,
        "observedGeneration": generation,
        "conditions": [c for c in conds if c["type"] == READY] + [c for c in conds if c["type"] != READY],
    }


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``new`` that differ from ``old``: what a status patch needs to send."""
    return {k: v for k, v in new.items() if old.get(k) != v}


@dataclass(frozen=True)
class Created:
    """Whether the job's children (and streams) exist, for its Created condition."""

    ok: bool
    reason: str
    message: str = ""


@dataclass(frozen=True)
class RolloutView:
    colocated: bool
    ready: int = 0
    desired: int = 0
    rejected: str | None = None  # the pool's pods are refused by the API server: why


def job_conditions(
    conditions: list[dict[str, Any]] | None,
    *,
    created: Created,
    trainer: TrainerView,
    rollout: RolloutView,
    suspended: bool,
    terminal: tuple[str, str, str] | None,
    now: float,
    generation: int | None,
    buffer: tuple[bool, str] | None = None,
) -> list[dict[str, Any]]:
    """Every condition of a job from what was observed this round.

    `created` says whether the children exist; `terminal` is the (type, reason, message)
    triple the lifecycle decided; a terminal condition, once True, is never taken back here. `buffer` is
    (reachable, message) when the job's JetStream buffer was contacted this round (None:
    not contacted, BufferReady stays as it was).
    """
    conds = list(conditions or [])

    def put(type_: str, status: bool, reason: str, message: str = "") -> None:
        nonlocal conds
        conds = set_condition(conds, type_, status, reason, message, now=now, generation=generation)

    put(CREATED, created.ok, created.reason, created.message)
    if buffer is not None:
        reachable, why = buffer
        put(BUFFER_READY, reachable, BUFFER_AVAILABLE if reachable else BUFFER_UNAVAILABLE, why)
    finished = is_finished(conds)
    if terminal is not None and not finished:
        type_, reason, message = terminal
        put(type_, True, reason, message)
        finished = True
    if trainer.ready >= trainer.replicas and trainer.replicas > 0 and not finished and not suspended:
        put(TRAINER_READY, True, ALL_RANKS_READY, f"{trainer.ready}/{trainer.replicas} trainer pods ready")
    else:
        why = JOB_FINISHED if finished else SUSPENDED if suspended else RANKS_NOT_READY
        put(TRAINER_READY, False, why, f"{trainer.ready}/{trainer.replicas} trainer pods ready")
    if rollout.colocated:
        put(ROLLOUT_READY, not finished and not suspended, COLOCATED, "the trainer pods run the engine")
    elif rollout.ready > 0 and not finished and not suspended:
        put(ROLLOUT_READY, True, ENGINES_READY, f"{rollout.ready}/{rollout.desired} rollout pods ready")
    elif rollout.rejected and not finished and not suspended:
        put(ROLLOUT_READY, False, PODS_REJECTED, rollout.rejected)
    else:
        why = JOB_FINISHED if finished else SUSPENDED if suspended else NO_ENGINE_READY
        put(ROLLOUT_READY, False, why, f"{rollout.ready}/{rollout.desired} rollout pods ready")
    put(SUSPENDED, suspended and not finished, SUSPENDED_BY_USER if suspended else NOT_SUSPENDED)
    running = is_true(conds, TRAINER_READY) and is_true(conds, ROLLOUT_READY)
    if finished:
        put(RUNNING, False, JOB_FINISHED)
    elif suspended:
        put(RUNNING, False, SUSPENDED)
    else:
        put(RUNNING, running, TRAINING if running else STARTING)
    if not is_true(conds, SUCCEEDED):
        put(SUCCEEDED, False, NOT_FINISHED)
    if not is_true(conds, FAILED):
        put(FAILED, False, NOT_FAILED)
    return conds


# ---------------------------------------------------------------------------------------
# Progress from the job's KV state


def _decimal(value: Any) -> str | None:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return None


def evaluation_status(evaluation: dict[str, Any]) -> dict[str, Any]:
    """status.evaluation from the trainer's record ({"step", "policy_version", "metrics":
    {"eval/<dataset>/<score>": value}})."""
    by_dataset: dict[str, dict[str, Any]] = {}
    for key, value in (evaluation.get("metrics") or {}).items():
        parts = key.split("/")
        if len(parts) != 3 or parts[0] != "eval":
            continue
        entry = by_dataset.setdefault(parts[1], {"dataset": parts[1]})
        score = parts[2]
        if score == "greedy":
            entry["greedy"] = _decimal(value)
        elif score == "pass@1":
            entry["passAt1"] = _decimal(value)
        elif score.startswith("pass@"):
            entry["passAtK"], entry["k"] = _decimal(value), int(score[5:])
    return {"step": int(evaluation.get("step", 0)), "policyVersion": int(evaluation.get("policy_version", 0)),
            "results": [by_dataset[d] for d in sorted(by_dataset)]}


def progress(
    state: JobState | None,
    *,
    max_steps: int,
    previous: tuple[float, int] | None,
    now: float,
    stage_names: tuple[str, ...] = (),
) -> tuple[dict[str, Any], tuple[float, int] | None]:
    """Status fields from the job-state document the trainer keeps in KV, and the new
    (time, samples) sample for the next rate estimate. The trainer records the stage's
    index; ``stage_names`` (spec.curriculum's, in order) turn it into the stage's name."""
    out: dict[str, Any] = {"maxSteps": max_steps}
    if state is None:
        return out, previous
    step = int(state.counters.get("steps", 0))
    samples = int(state.counters.get("samples", 0))
    out["step"] = step
    out["progressPercent"] = min(100, int(100 * step / max_steps)) if max_steps else 0
    out["policyVersion"] = int(state.policy_version)
    if "infra_failed" in state.counters:
        out["infraFailedSamples"] = int(state.counters["infra_failed"])
    index = int(state.curriculum_stage)
    out["curriculumStage"] = stage_names[index] if 0 <= index < len(stage_names) else str(index)
    m = state.metrics
    reward = {k: v for k, v in (("mean", _decimal(m.reward_mean)), ("std", _decimal(m.reward_std)),
                                ("passRate", _decimal(m.pass_rate))) if v is not None}
    if reward:
        out["reward"] = reward
    if state.evaluation:
        out["evaluation"] = evaluation_status(state.evaluation)
    if previous is not None and now > previous[0] and samples >= previous[1]:
        rate = (samples - previous[1]) / (now - previous[0])
        out["samplesPerSecond"] = f"{rate:.3g}"
        steps_per_sample = step / samples if samples else 0
        if rate > 0 and steps_per_sample > 0:
            out["estimatedSecondsRemaining"] = int(max(0, max_steps - step) / (rate * steps_per_sample))
    return out, (now, samples)


def _scores(result: dict[str, Any]) -> str:
    parts = [f"greedy {result['greedy']}" if result.get("greedy") else "",
             f"pass@1 {result['passAt1']}" if result.get("passAt1") else "",
             f"pass@{result.get('k')} {result['passAtK']}" if result.get("passAtK") else ""]
    return f"{result['dataset']} " + ", ".join(p for p in parts if p)


def progress_events(old: dict[str, Any], new: dict[str, Any]) -> list[Event]:
    """The job's story from one status to the next: stage switches, evaluations, weight versions.

    Weight versions move every step, so only about every tenth of maxSteps is announced
    (a long job's Events stay readable and a fleet's API server is not flooded).
    """
    events = []
    step = new.get("step", 0)
    before, after = old.get("curriculumStage"), new.get("curriculumStage")
    if before and after and before != after:
        events.append(Event("Normal", "StageSwitched", f"curriculum stage {before} -> {after} at step {step}"))
    evaluation = new.get("evaluation")
    if evaluation and (old.get("evaluation") or {}).get("step") != evaluation.get("step"):
        scores = "; ".join(_scores(r) for r in evaluation.get("results") or [])
        events.append(Event("Normal", "Evaluated",
                            f"step {evaluation['step']} (policy version {evaluation['policyVersion']}): {scores}"))
    every = max(1, int(new.get("maxSteps") or 0) // 10)
    v_old, v_new = int(old.get("policyVersion") or 0), int(new.get("policyVersion") or 0)
    if v_new // every > v_old // every:
        events.append(Event("Normal", "WeightsPublished", f"policy version {v_new} published at step {step}"))
    return events


def loaded_versions(reported: Mapping[str, int], ready_pods: list[str]) -> list[int]:
    """RolloutPool status.policyVersions: the distinct versions the pool's ready pods last
    reported loading (a pod gone, or not ready, no longer counts), ascending."""
    return sorted({reported[p] for p in ready_pods if p in reported})
