"""What to do with an RLJob's trainer gang this round: a pure decision over observed pods.

The gang is all-or-nothing. Pods carry their gang generation (= restarts so far); a
failed rank makes the whole gang go and a new generation come, from the last checkpoint,
until runPolicy.backoffLimit. Every decision is recomputable from the cluster and the
job's status alone, so an operator restarted half-way repeats nothing: restarts is
bumped in status before the old gang is deleted, and pods of an older generation are
always deleted on sight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kuberl.operator.api.conditions import (
    BACKOFF_LIMIT_EXCEEDED,
    DEADLINE_EXCEEDED,
    FAILED,
    SUCCEEDED,
    TRAINER_COMPLETED,
)
from kuberl.operator.api.rolloutpool import RolloutPoolSpec

from kuberl.operator.naming import trainer_pod_name


@dataclass(frozen=True)
class PodView:
    name: str
    index: int
    generation: int
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    ready: bool = False
    deleting: bool = False
    message: str = ""
    # The pod was evicted, preempted or drained (its DisruptionTarget condition): not the
    # trainer's fault, so the restart it causes is not counted against backoffLimit, as a
    # Job's podFailurePolicy Ignore rule on DisruptionTarget does.
    disrupted: bool = False


@dataclass(frozen=True)
class JobView:
    name: str
    replicas: int
    backoff_limit: int
    restarts: int
    suspend: bool
    finished: bool  # Succeeded or Failed already True
    completion_time: float | None
    start_time: float | None
    active_deadline_s: int | None
    ttl_after_finished_s: int | None
    pods: tuple[PodView, ...]
    now: float
    disruptions: int = 0  # restarts so far caused by disruptions (not counted against backoffLimit)
    # Every rank of this generation was Ready at the last status write (TrainerReady): a
    # rank missing now was lost (deleted and gone between two rounds), not never created.
    gang_was_ready: bool = False


@dataclass
class Plan:
    create: list[int] = field(default_factory=list)  # replica indices to create for the current generation
    delete: list[str] = field(default_factory=list)  # pod names to delete
    restarts: int = 0
    disruptions: int = 0
    restarted: str | None = None  # message when this round restarts the gang
    terminal: tuple[str, str, str] | None = None  # (Succeeded|Failed, reason, message)
    start_time: float | None = None
    pause_children: bool = False  # rollout pool / envs owned by the job run zero pods
    delete_job: bool = False  # TTL after finished has passed
    ready: int = 0  # ready pods of the current generation


def _live(pods: tuple[PodView, ...]) -> list[PodView]:
    return [p for p in pods if not p.deleting]


def decide(view: JobView) -> Plan:
    plan = Plan(restarts=view.restarts, disruptions=view.disruptions, start_time=view.start_time)
    live = _live(view.pods)

    if view.finished:
        # Keep finished pods (their logs); remove any still running, as a Job does on failure.
        plan.delete = [p.name for p in live if p.phase not in ("Succeeded", "Failed")]
        plan.pause_children = True
        if view.ttl_after_finished_s is not None and view.completion_time is not None:
            plan.delete_job = view.now >= view.completion_time + view.ttl_after_finished_s
        return plan

    if view.suspend:
        plan.delete = [p.name for p in live]
        plan.pause_children = True
        plan.start_time = None  # the deadline counts running time since the last resume, as for Jobs
        return plan

    if (
        view.active_deadline_s is not None
        and view.start_time is not None
        and view.now - view.start_time > view.active_deadline_s
    ):
        plan.delete = [p.name for p in live]
        plan.pause_children = True
        plan.terminal = (FAILED, DEADLINE_EXCEEDED,
                         f"the job ran longer than activeDeadlineSeconds={view.active_deadline_s}")
        return plan

    current = [p for p in live if p.generation == view.restarts and p.index < view.replicas]
    stale = [p for p in live if p not in current]
    plan.delete = [p.name for p in stale]
    # A rank someone deleted mid-run (kubectl delete, a drain) is lost to the gang as surely
    # as a failed one: the other ranks would wait on it at the next collective. It restarts
    # the gang, counted as a Job counts a deleted pod, unless it carries DisruptionTarget.
    deleted = [p for p in view.pods if p.deleting and p.generation == view.restarts and p.index < view.replicas
               and p.phase != "Succeeded"]
    if view.gang_was_ready:
        seen = {p.index for p in current} | {p.index for p in deleted}
        deleted += [PodView(trainer_pod_name(view.name, i), i, view.restarts, "Unknown")
                    for i in range(view.replicas) if i not in seen]
    failed = [p for p in current if p.phase == "Failed"] + deleted
    if failed:
        names = ", ".join(sorted(p.name for p in failed))
        if all(p.disrupted for p in failed):
            plan.restarts, plan.disruptions = view.restarts + 1, view.disruptions + 1
            plan.restarted = (f"trainer pod(s) {names} were disrupted (evicted or preempted); restarting the gang from "
                              f"the last "
                              f"checkpoint, not counted against backoffLimit "
                              f"({view.restarts - view.disruptions}/{view.backoff_limit} used)")
            plan.delete = [p.name for p in live]
            return plan
        if view.restarts - view.disruptions >= view.backoff_limit:
            plan.delete = [p.name for p in live if p.phase not in ("Succeeded", "Failed")]
            plan.pause_children = True
            plan.terminal = (FAILED, BACKOFF_LIMIT_EXCEEDED,
                             f"trainer pod(s) {names} failed after {view.restarts - view.disruptions} counted gang "
                             f"restart(s) (backoffLimit={view.backoff_limit})")
            return plan
        plan.restarts = view.restarts + 1
        how = "failed" if not deleted else "were deleted" if len(deleted) == len(failed) else "failed or were deleted"
        plan.restarted = (f"trainer pod(s) {names} {how}; restarting the gang from the last checkpoint "
                          f"({plan.restarts - view.disruptions}/{view.backoff_limit})")
        plan.delete = [p.name for p in live]
        return plan

    if len(current) == view.replicas and all(p.phase == "Succeeded" for p in current):
        plan.terminal = (SUCCEEDED, TRAINER_COMPLETED, f"all {view.replicas} trainer pods completed")
        plan.pause_children = True
        return plan

    # A name still held by a pod on its way out (old generation, or deleting) cannot be
    # reused yet; those ranks are created on a later round.
    taken = {p.name for p in view.pods if p not in current}
    present = {p.index for p in current}
    plan.create = [i for i in range(view.replicas) if i not in present and trainer_pod_name(view.name, i) not in taken]
    plan.ready = sum(1 for p in current if p.phase == "Running" and p.ready)
    if plan.start_time is None and (plan.create or current):
        plan.start_time = view.now
    return plan


@dataclass(frozen=True)
class PoolRelease:
    """What to do to a shared (poolRef) RolloutPool whose job is done with it."""

    replicas: int | None  # new spec.replicas (the pool's minReplicas), None: leave it
    unbind: bool  # clear status.boundJob
    message: str


def release_shared_pool(job: str, pool: dict | None, *, owned: bool, done: bool) -> PoolRelease | None:
    """A finished (or deleted) job lets go of the shared pool it was bound to.

    The pool outlives the job and other jobs may bind to it next, so it is scaled down
    to its minReplicas (not to zero unless that is its minimum) and its binding cleared.
    Owned (inline) pools are paused with the job instead; a pool bound to another job
    meanwhile is not ours to touch. Scale first, unbind second: a crash in between
    leaves the binding, so the next round repeats both.
    """
    if owned or not done or pool is None:
        return None
    if (pool.get("status") or {}).get("boundJob") != job:
        return None
    spec = RolloutPoolSpec.model_validate(pool.get("spec") or {})  # the API's defaults, from its model
    minimum = spec.min_replicas
    replicas = minimum if spec.replicas != minimum else None
    return PoolRelease(replicas=replicas, unbind=True,
                       message=f"job {job} is done with shared RolloutPool {pool['metadata']['name']}: released, "
                               f"scaled to minReplicas={minimum}")
