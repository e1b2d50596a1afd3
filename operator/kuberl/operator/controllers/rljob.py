"""The RLJob controller: validate, create children, supervise the gang, aggregate status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from kuberl.operator.adapters import metrics
from kuberl.operator.adapters.kube import KubeError
from kuberl.operator.api.agentenv import AgentEnvSpec
from kuberl.operator.api.conditions import (
    BUFFER_UNAVAILABLE,
    CHILD_REJECTED,
    CHILDREN_CREATED,
    CREATED,
    FAILED,
    INVALID_SPEC,
    SPEC_VALID,
    TRAINER_READY,
)
from kuberl.operator.api.constants import API_VERSION, GROUP, VERSION
from kuberl.operator.api.rolloutpool import RolloutPoolSpec
from kuberl.operator.children.desired import JobChildren, job_children
from kuberl.operator.children.rollout import credential_secrets
from kuberl.operator.controllers.agentenv import reconcile_env
from kuberl.operator.controllers.job_round import JobRound, job_buffer_auth, observe, pod_views, rollout_view
from kuberl.operator.controllers.rolloutpool import reconcile_pool
from kuberl.operator.controllers.runtime import (
    PERIODIC,
    RT,
    _event,
    _set_paused,
    access_policy,
    buffer_auth,
    buffer_default_url,
    ensure,
    ensure_asserted,
    handled,
    managed_by_us,
    patch_status,
    reconcile_fresh,
)
from kuberl.operator.decisions import access, lifecycle
from kuberl.operator.decisions import references as semantics
from kuberl.operator.decisions import status as st
from kuberl.operator.decisions.owned_pool import SCALE_UNDONE, owned_pool_update
from kuberl.workloads.buffer.admin import BufferConfig
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)

FINALIZER_RETRY_DELAY_S = 5


def reconcile_job(body: Mapping, trigger: str) -> None:
    reconcile_fresh("RLJob", body, trigger, _reconcile_job)


def _reconcile_job(body: dict) -> None:
    """observe → validate → ensure children → decide → act on the gang → pause or release
    → write status (then post the round's Events)."""
    r = observe(body)
    if not _validate(r):
        return
    finished = st.is_finished(r.conds)
    children = None if finished else _desired(r)
    created = _ensure_children(r, children) if children is not None else _created_before(r)
    plan = _decide(r, finished)
    if plan.delete_job:
        log.info("deleting finished RLJob after its TTL", namespace=r.namespace, name=r.name)
        RT.kube.delete(API_VERSION, "RLJob", r.namespace, r.name, propagation="Background")
        r.post_events()
        return
    created = _act_on_gang(r, plan, children, created)
    _pause_or_release(r, plan, finished)
    _write_status(r, plan, created)


def _validate(r: JobRound) -> bool:
    """The semantic checks against what the job names. A job that has not started and fails
    them is marked Failed (InvalidSpec) and gets no children; one that failed them before
    and passes now (its spec fixed, or what it names appeared) may start after all."""
    errors = semantics.semantic_errors(r.job, r.lookups, access_policy())
    failed = st.find(r.conds, FAILED)
    invalid_before = failed is not None and failed.get("status") == "True" and failed.get("reason") == INVALID_SPEC
    if errors and not st.is_true(r.conds, CREATED):
        message = semantics.describe(errors)
        conds = st.set_condition(r.conds, FAILED, True, INVALID_SPEC, message, now=r.now, generation=r.generation)
        conds = st.set_condition(conds, CREATED, False, INVALID_SPEC, "children are not created for an invalid spec",
                                 now=r.now, generation=r.generation)
        if not invalid_before or failed.get("message") != message:
            r.event("Warning", INVALID_SPEC, message)
            log.warning("invalid RLJob spec", namespace=r.namespace, name=r.name, errors=message)
        _commit_status(r, {"conditions": conds, "phase": st.phase_of(conds), "observedGeneration": r.generation})
        return False
    if invalid_before:
        r.conds = st.set_condition(r.conds, FAILED, False, SPEC_VALID, "", now=r.now, generation=r.generation)
        r.event("Normal", SPEC_VALID, "the spec is valid now; creating the job's children")
    return True


def _desired(r: JobRound) -> JobChildren:
    """The job's children (children.desired), with the specs of the pool and envs it names as read this round."""
    pool = r.pools.get(r.pool_name) if r.pool_name else None
    referenced = (
        RolloutPoolSpec.model_validate(pool["spec"]) if pool is not None and pool.get("spec") is not None else None
    )
    env_specs = {n: AgentEnvSpec.model_validate(o["spec"]) if o is not None and o.get("spec") is not None else None
                 for n, o in r.envs.items()}
    return job_children(r.job, RT.settings, referenced_pool=referenced, referenced_envs=env_specs)


def _created_before(r: JobRound) -> st.Created:
    """A finished job creates nothing: its Created condition stays as it was."""
    c = st.find(r.conds, CREATED)
    return st.Created(c["status"] == "True", c.get("reason", ""),
                      c.get("message", "")) if c else st.Created(True, CHILDREN_CREATED)


def _ensure_children(r: JobRound, children: JobChildren) -> st.Created:
    """ConfigMap, rendezvous Service, owned pool and envs, the shared pool's binding, streams.

    The pool and envs were read this round (`job_round.observe`): only missing ones are
    created. The ConfigMap and Service are asserted when their manifest changes or they are
    gone (`ensure_asserted`)."""
    try:
        ensure_asserted(children.config_map, r.body, refresh=("data",))
        ensure_asserted(children.service, r.body)
        if children.pool is not None:
            _ensure_owned_pool(r, children.pool)
        for env in children.envs:
            _ensure_owned_env(r, env)
        _bind_shared_pool(r)
    except KubeError as e:
        if not e.is_refusal:
            raise
        return st.Created(False, CHILD_REJECTED, f"the API server refused a child of the job: {e.server_message}")
    return _ensure_streams(r)


def _ensure_owned_pool(r: JobRound, desired: dict) -> None:
    pool_name = desired["metadata"]["name"]
    obj, created = r.pools.get(pool_name), False
    if obj is None:
        obj, created = ensure(desired, r.body)
    if not created and r.owns(obj):
        # Carry the job's template over (decisions.owned_pool: who owns the replica count).
        update = owned_pool_update(obj, desired, r.name)
        patch = {**({"spec": update.spec} if update.spec else {}),
                 **({"metadata": {"annotations": update.annotations}} if update.annotations else {})}
        if patch:
            obj = RT.kube.patch(API_VERSION, "RolloutPool", r.namespace, pool_name, patch) or obj
        if update.warning:
            r.event("Warning", SCALE_UNDONE, update.warning)
            r.event("Warning", SCALE_UNDONE, update.warning, on=obj)
            log.warning("hand-made scale of an owned pool undone", namespace=r.namespace, job=r.name, pool=pool_name)
    r.pools[pool_name] = obj


def _ensure_owned_env(r: JobRound, desired: dict) -> None:
    env_name = desired["metadata"]["name"]
    obj, created = r.envs.get(env_name), False
    if obj is None:
        obj, created = ensure(desired, r.body)
    if not created and obj.get("spec") != desired["spec"] and r.owns(obj):
        RT.kube.patch(API_VERSION, "AgentEnv", r.namespace, env_name, {"spec": desired["spec"]})
    r.envs[env_name] = obj


def _bind_shared_pool(r: JobRound) -> None:
    """A shared pool is bound here; the job's own pool binds itself (its owner reference names the job)."""
    pool = r.pools.get(r.pool_name) if r.pool_name else None
    if pool is not None and not r.owns(pool) and (pool.get("status") or {}).get("boundJob") != r.name:
        RT.kube.patch(API_VERSION, "RolloutPool", r.namespace, r.pool_name, {"status": {"boundJob": r.name}},
                      subresource="status")


def _ensure_streams(r: JobRound) -> st.Created:
    url = r.job.spec.buffer.url
    key = (r.job.metadata.get("uid") or r.name, url)
    if key not in RT.streams_ready:
        try:
            RT.nats.ensure_job(url, r.namespace, r.name, BufferConfig.from_spec(r.job.spec.buffer),
                               auth=job_buffer_auth(r.job))
            RT.streams_ready.add(key)
        except Exception as e:  # noqa: BLE001 (NATS down or unreachable: retried next round)
            return st.Created(False, BUFFER_UNAVAILABLE,
                              f"creating JetStream streams at {access.redact_url(url)} failed: {e}")
    return st.Created(True, CHILDREN_CREATED, "config, rendezvous service, rollout pool, agent envs and streams exist")


def _decide(r: JobRound, finished: bool) -> lifecycle.Plan:
    spec, old = r.job.spec, r.old_status
    return lifecycle.decide(lifecycle.JobView(
        name=r.name,
        replicas=spec.trainer.replicas,
        backoff_limit=spec.run_policy.backoff_limit,
        restarts=int(old.get("restarts", 0)),
        disruptions=int(old.get("disruptions", 0)),
        gang_was_ready=st.is_true(old.get("conditions") or [], TRAINER_READY),
        suspend=spec.suspend,
        finished=finished,
        completion_time=st.parse_rfc3339(old.get("completionTime")),
        start_time=st.parse_rfc3339(old.get("startTime")),
        active_deadline_s=spec.run_policy.active_deadline_seconds,
        ttl_after_finished_s=spec.run_policy.ttl_seconds_after_finished,
        pods=pod_views(r, finished),
        now=r.now,
    ))


def _act_on_gang(r: JobRound, plan: lifecycle.Plan, children: JobChildren | None, created: st.Created) -> st.Created:
    """Restart, delete and create trainer pods as the plan says; a refused pod shows in Created."""
    if plan.restarted:
        # Count the restart before deleting anything: a crash in between then cannot
        # restart twice (the old generation's pods are stale and deleted on sight).
        RT.kube.patch(API_VERSION, "RLJob", r.namespace, r.name,
                      {"status": {"restarts": plan.restarts, "disruptions": plan.disruptions}},
                      subresource="status")
        r.old_status["restarts"], r.old_status["disruptions"] = plan.restarts, plan.disruptions
        metrics.GANG_RESTARTS.inc()
        r.event("Warning", "GangRestart", plan.restarted)
    for pod in plan.delete:
        RT.kube.delete("v1", "Pod", r.namespace, pod)
    if not (plan.create and created.ok):
        return created
    children = children or _desired(r)
    for index in plan.create:
        try:
            ensure(children.trainer_pod(index, plan.restarts), r.body)
        except KubeError as e:
            if not e.is_refusal:
                raise
            return st.Created(False, CHILD_REJECTED, f"the API server refused trainer pod {index}: {e.server_message}")
    return created


def _pause_or_release(r: JobRound, plan: lifecycle.Plan, finished: bool) -> None:
    """Pause or unpause the pool and envs the job owns; let go of a shared pool once it is done.

    A pause only changes an annotation (the children's spec handlers do not fire), so the
    child is reconciled here at once: its Deployment scales now, not on its next periodic
    round, and the pool status read for this round's status is one taken after the change."""
    pool = r.pools.get(r.pool_name) if r.pool_name else None
    if r.owns(pool):
        if _set_paused(API_VERSION, "RolloutPool", r.namespace, pool, plan.pause_children):
            reconcile_pool(pool, "paused" if plan.pause_children else "unpaused")
            r.pools[r.pool_name] = RT.kube.get(API_VERSION, "RolloutPool", r.namespace, r.pool_name)
    elif r.pool_name and (finished or plan.terminal is not None):
        released = _release_shared_pool(r.namespace, r.name, pool)
        if released:
            r.event("Normal", "PoolReleased", released)
            r.event("Normal", "Released", released, on=pool)
    for entry in r.job.spec.agent_envs or []:
        env = r.envs.get(entry.name)
        if entry.spec is not None and r.owns(env):
            if _set_paused(API_VERSION, "AgentEnv", r.namespace, env, plan.pause_children):
                reconcile_env(env, "paused" if plan.pause_children else "unpaused")


def _read_buffer(r: JobRound, created: st.Created) -> tuple[tuple[bool, str] | None, Any]:
    """(reachable, why) for BufferReady, and the job's progress state read from the buffer.
    Unreachable while creating the streams, or when reading progress fails."""
    url = r.job.spec.buffer.url
    if not created.ok:
        return ((False, created.message) if created.reason == BUFFER_UNAVAILABLE else None), None
    try:
        state = RT.nats.job_state(url, r.namespace, r.name, auth=job_buffer_auth(r.job))
        return (True, f"JetStream at {access.redact_url(url)} reachable"), state
    except Exception as e:  # noqa: BLE001 (progress is best effort; the next round retries)
        return (False, f"reading job state from JetStream at {access.redact_url(url)} failed: {e}"), None


def _write_status(r: JobRound, plan: lifecycle.Plan, created: st.Created) -> None:
    buffer_seen, state = _read_buffer(r, created)
    rollout = rollout_view(r)
    conds = st.job_conditions(r.conds, buffer=buffer_seen, created=created,
                              trainer=st.TrainerView(replicas=r.job.spec.trainer.replicas, ready=plan.ready),
                              rollout=rollout, suspended=r.job.spec.suspend, terminal=plan.terminal, now=r.now,
                              generation=r.generation)
    new: dict[str, Any] = {
        "conditions": conds,
        "phase": st.phase_of(conds),
        "observedGeneration": r.generation,
        "restarts": plan.restarts,
        "disruptions": plan.disruptions,
        # The clock starts when the gang is really created, not while creation waits on the buffer.
        "startTime": st.rfc3339(plan.start_time)
        if plan.start_time is not None and (created.ok or r.old_status.get("startTime"))
        else None,
    }
    if plan.terminal and not r.old_status.get("completionTime"):
        new["completionTime"] = st.rfc3339(r.now)
    if not rollout.colocated:
        new["rollout"] = {"ready": rollout.ready, "desired": rollout.desired,
                          "summary": f"{rollout.ready}/{rollout.desired}"}
    if state is not None:
        new.update(_progress(r, state))
    elif created.ok:
        new.setdefault("maxSteps", r.job.spec.run_policy.max_steps)
    for event in [*st.transition_events(r.conds, conds), *st.rejection_events(r.conds, conds),
                  *st.progress_events(r.old_status, new)]:
        r.event(event.type, event.reason, event.message)
    _commit_status(r, new)


def _commit_status(r: JobRound, new: dict[str, Any]) -> None:
    """The round's last step: the status fields that changed, the phase metric, then the queued Events."""
    patch_status("RLJob", r.namespace, r.name, r.old_status, new)
    RT.phases.set(r.uid, new["phase"])
    r.post_events()


def _progress(r: JobRound, state: Any) -> dict[str, Any]:
    """The status fields read from the job's state in the buffer (steps, rate, stage, eval, versions)."""
    stages = tuple(stage.name for stage in r.job.spec.curriculum.stages) if r.job.spec.curriculum else ()
    progress, sample = st.progress(state, max_steps=r.job.spec.run_policy.max_steps,
                                   previous=RT.rate_samples.get(r.uid),
                                   now=r.now, stage_names=stages)
    if sample is not None:
        RT.rate_samples[r.uid] = sample
    return progress


def _release_shared_pool(namespace: str, job: str, pool: dict | None) -> str | None:
    """Let go of a shared pool the (finished or deleted) job was bound to: minReplicas,
    unbound. Returns what was done, for the callers' Events; None when nothing was."""
    release = lifecycle.release_shared_pool(job, pool, owned=False, done=True)
    if release is None or pool is None:
        return None
    pool_name = pool["metadata"]["name"]
    if release.replicas is not None:
        RT.kube.patch(API_VERSION, "RolloutPool", namespace, pool_name, {"spec": {"replicas": release.replicas}})
    if release.unbind:
        RT.kube.patch(API_VERSION, "RolloutPool", namespace, pool_name, {"status": {"boundJob": None}},
                      subresource="status")
    log.info("shared rollout pool released", namespace=namespace, job=job, pool=pool_name, replicas=release.replicas)
    return release.message


@kopf.on.create(GROUP, VERSION, "rljobs", when=managed_by_us)
def rljob_created(body: kopf.Body, retry: int, **_: Any) -> None:
    handled("RLJob", retry, lambda: reconcile_job(body, "create"))


@kopf.on.update(GROUP, VERSION, "rljobs", field="spec", when=managed_by_us)
def rljob_spec_changed(body: kopf.Body, retry: int, **_: Any) -> None:
    handled("RLJob", retry, lambda: reconcile_job(body, "update"))


def job_round(body: Mapping) -> None:
    """The periodic round the sweeper runs (controllers.sweeper) on jobs `managed_by_us`."""
    reconcile_job(body, PERIODIC)


@kopf.on.delete(GROUP, VERSION, "rljobs", when=managed_by_us)
def rljob_deleted(body: kopf.Body, spec: kopf.Spec, namespace: str, name: str, uid: str, retry: int, **_: Any) -> None:
    """The finaliser: Kubernetes collects owned children, but JetStream is not Kubernetes.

    Removing the streams is retried for about a minute (settings.finalizer_retries); after that the
    job is let go with a Warning naming what is left, so a NATS outage never holds a
    namespace's deletion hostage."""
    pool_ref = (spec.get("rollout") or {}).get("poolRef")
    if pool_ref and spec.get("mode") != "colocated":  # the spec as stored (defaulted); it may not parse
        pool = RT.kube.get(API_VERSION, "RolloutPool", namespace, pool_ref)
        released = _release_shared_pool(namespace, name, pool)
        if released:
            _event(pool, "Normal", "Released", released)
    buffer = spec.get("buffer") or {}
    url = buffer.get("url") or buffer_default_url()
    try:
        auth = buffer_auth(namespace, credential_secrets(spec)["buffer_credentials_secret"])
        deleted = RT.nats.delete_job(url, namespace, name, auth=auth)
    except Exception as e:
        where = access.redact_url(url)
        if retry + 1 >= RT.settings.finalizer_retries:
            message = (f"gave up deleting the job's JetStream streams and KV bucket at {where} after {retry + 1} "
                       f"attempts ({e}); "
                       f"delete them by hand (`nats stream rm`) or they expire with the server's limits")
            _event(body, "Warning", "BufferCleanupAbandoned", message)
            log.warning("finaliser gave up on the buffer", namespace=namespace, name=name, error=str(e))
            RT.forget(uid)
            return
        raise kopf.TemporaryError(f"deleting the job's JetStream streams at {where} failed: {e}",
                                  delay=FINALIZER_RETRY_DELAY_S) from e
    log.info("RLJob deleted", namespace=namespace, name=name, streams=deleted)
    RT.forget(uid)
