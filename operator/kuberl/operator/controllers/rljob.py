"""The RLJob controller: validate, create children, supervise the gang, aggregate status."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

import kopf

from kuberl.operator.adapters import metrics
from kuberl.operator.adapters.kube import KubeError
from kuberl.operator.api import RLJob
from kuberl.operator.api.agentenv import AgentEnvSpec
from kuberl.operator.api.conditions import (
    BUFFER_UNAVAILABLE,
    CHILD_REJECTED,
    CHILDREN_CREATED,
    CREATED,
    FAILED,
    INVALID_SPEC,
    PODS_REJECTED,
    READY,
    SPEC_VALID,
    TRAINER_READY,
)
from kuberl.operator.api.constants import (
    API_VERSION,
    GROUP,
    LABEL_GANG_GENERATION,
    LABEL_REPLICA_INDEX,
    VERSION,
)
from kuberl.operator.api.rolloutpool import RolloutPoolSpec
from kuberl.operator.children.agentenv import inline_agent_envs
from kuberl.operator.children.rollout import credential_secrets, inline_rollout_pool
from kuberl.operator.children.trainer import trainer_pod, trainer_service
from kuberl.operator.children.workload_config import (
    job_config_map,
    job_workload_config,
)
from kuberl.operator.controllers.agentenv import reconcile_env
from kuberl.operator.controllers.rolloutpool import reconcile_pool
from kuberl.operator.controllers.runtime import (
    PERIODIC,
    handled,
    RT,
    SETTINGS,
    _controller_uid,
    _event,
    _set_paused,
    access_policy,
    buffer_auth,
    buffer_default_url,
    ensure,
    ensure_asserted,
    managed_by_us,
    patch_status,
    plain,
    reconcile_fresh,
    secret_data,
)
from kuberl.operator.decisions import access, lifecycle
from kuberl.operator.decisions import references as semantics
from kuberl.operator.decisions import status as st
from kuberl.operator.decisions.owned_pool import SCALE_UNDONE, owned_pool_update
from kuberl.operator.naming import pool_name_for, trainer_selector
from kuberl.workloads.buffer.admin import BufferConfig
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)

FINALIZER_RETRY_DELAY_S = 5


def _parse_job(body: Mapping) -> RLJob:
    data = plain(body)
    return RLJob.model_validate({"metadata": data.get("metadata", {}), "spec": data.get("spec", {})})


def _lookups(job: RLJob, namespace: str) -> tuple[semantics.Lookups, dict[str, dict | None], dict[str, dict | None]]:
    pool_names, env_names = semantics.referenced_names(job)
    pools = {n: RT.watched.get(API_VERSION, "RolloutPool", namespace, n) for n in pool_names}
    envs = {n: RT.watched.get(API_VERSION, "AgentEnv", namespace, n) for n in env_names}
    active: frozenset[str] = frozenset()
    busy = [p.get("status", {}).get("boundJob") for p in pools.values() if p]
    busy = [b for b in busy if b and b != job.metadata["name"]]
    if busy:
        active = frozenset(b for b in busy if (other := RT.watched.get(API_VERSION, "RLJob", namespace, b))
                           and not st.is_finished((other.get("status") or {}).get("conditions")))

    def existing(obj: dict | None) -> semantics.Existing | None:
        if obj is None:
            return None
        return semantics.Existing(owner_uid=_controller_uid(obj), spec=obj.get("spec") or {}, bound_job=(obj.get("status") or {}).get("boundJob"))

    secrets: dict[str, frozenset[str] | None] | None = None  # None: not read (the installation forbids it)
    if RT.settings.read_job_secrets:
        secrets = {}
        for need in access.secret_needs(job):
            data = secret_data(namespace, need.name)
            secrets[need.name] = frozenset(data) if data is not None else None
    lookups = semantics.Lookups(pools={n: existing(o) for n, o in pools.items()}, envs={n: existing(o) for n, o in envs.items()},
                                active_jobs=active, secrets=secrets)
    return lookups, pools, envs


def _ensure_children(body: Mapping, job: RLJob, namespace: str, pools: dict, envs: dict) -> tuple[bool, str, str]:
    """ConfigMap, rendezvous Service, owned pool and envs, streams; (ok, reason, message) for Created.

    The pool and envs were read this round (`_lookups`): only missing ones are created.
    The ConfigMap and Service are asserted when their manifest changes or they are gone
    (`ensure_asserted`)."""
    name = job.metadata["name"]
    settings = RT.settings
    pool_name = pool_name_for(job)
    pool = pools.get(pool_name) if pool_name else None
    referenced = RolloutPoolSpec.model_validate(pool["spec"]) if pool is not None and pool.get("spec") is not None else None
    env_specs = {n: AgentEnvSpec.model_validate(o["spec"]) if o is not None and o.get("spec") is not None else None for n, o in envs.items()}
    config_map = job_config_map(job, settings, job_workload_config(job, referenced_pool=referenced, referenced_envs=env_specs))
    ensure_asserted(config_map, body, refresh=("data",))
    ensure_asserted(trainer_service(job, namespace, settings), body)
    inline_pool = inline_rollout_pool(job, namespace, settings)
    if inline_pool is not None:
        obj = pools.get(inline_pool["metadata"]["name"])
        created = False
        if obj is None:
            obj, created = ensure(inline_pool, body)
        if not created and _controller_uid(obj) == job.metadata.get("uid"):
            # Carry the job's template over (decisions.owned_pool: who owns the replica count).
            update = owned_pool_update(obj, inline_pool, name)
            patch = {**({"spec": update.spec} if update.spec else {}),
                     **({"metadata": {"annotations": update.annotations}} if update.annotations else {})}
            if patch:
                obj = RT.kube.patch(API_VERSION, "RolloutPool", namespace, inline_pool["metadata"]["name"], patch) or obj
            if update.warning:
                _event(body, "Warning", SCALE_UNDONE, update.warning)
                _event(obj, "Warning", SCALE_UNDONE, update.warning)
                log.warning("hand-made scale of an owned pool undone", namespace=namespace, job=name, pool=inline_pool["metadata"]["name"])
        pools[inline_pool["metadata"]["name"]] = obj
    for env in inline_agent_envs(job, namespace, settings):
        obj = envs.get(env["metadata"]["name"])
        created = False
        if obj is None:
            obj, created = ensure(env, body)
        if not created and obj.get("spec") != env["spec"] and _controller_uid(obj) == job.metadata.get("uid"):
            RT.kube.patch(API_VERSION, "AgentEnv", namespace, env["metadata"]["name"], {"spec": env["spec"]})
        envs[env["metadata"]["name"]] = obj
    # A shared pool is bound here; the job's own pool binds itself (its owner reference names the job).
    if pool_name and pools.get(pool_name) is not None and _controller_uid(pools[pool_name]) != job.metadata.get("uid") \
            and (pools[pool_name].get("status") or {}).get("boundJob") != name:
        RT.kube.patch(API_VERSION, "RolloutPool", namespace, pool_name, {"status": {"boundJob": name}}, subresource="status")
    url = job.spec.buffer.url
    key = (job.metadata.get("uid") or name, url)
    if key not in RT.streams_ready:
        try:
            RT.nats.ensure_job(url, namespace, name, BufferConfig.from_spec(job.spec.buffer), auth=_buffer_auth(job))
            RT.streams_ready.add(key)
        except Exception as e:  # noqa: BLE001 (NATS down or unreachable: retried next round)
            return False, BUFFER_UNAVAILABLE, f"creating JetStream streams at {access.redact_url(url)} failed: {e}"
    return True, CHILDREN_CREATED, "config, rendezvous service, rollout pool, agent envs and streams exist"


def _buffer_auth(job: RLJob) -> dict[str, str] | None:
    ref = job.spec.buffer.credentials_secret
    return buffer_auth(job.metadata["namespace"], ref.name if ref else None)


def _trainer_pods(namespace: str, name: str, replicas: int, finished: bool) -> list[dict]:
    """The gang's pods from the watch; from the API server when the watch shows fewer than
    the gang has: a gang that is starting or lost a pod, or a watch still listing after a
    standby took over (kopf gates handlers on its indices only once per process). The
    decisions that follow (create pods, restart the gang) must not rest on a partial list;
    a finished job takes none, so its (possibly deleted) pods are not asked for again."""
    pods = RT.watched.list("v1", "Pod", namespace, trainer_selector(name))
    if len(pods) < replicas and not finished:
        pods = RT.kube.list("v1", "Pod", namespace, trainer_selector(name))
    return pods


def _pod_views(namespace: str, name: str, replicas: int, finished: bool) -> tuple[lifecycle.PodView, ...]:
    views = []
    for pod in _trainer_pods(namespace, name, replicas, finished):
        meta, status = pod["metadata"], pod.get("status") or {}
        labels = meta.get("labels") or {}
        ready = st.is_true(status.get("conditions"), READY)
        views.append(lifecycle.PodView(
            name=meta["name"],
            index=int(labels.get(LABEL_REPLICA_INDEX, -1)),
            generation=int(labels.get(LABEL_GANG_GENERATION, -1)),
            phase=status.get("phase", "Pending"),
            ready=ready,
            deleting=bool(meta.get("deletionTimestamp")),
            message=status.get("message", ""),
            disrupted=any(c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in status.get("conditions") or []),
        ))
    return tuple(views)


def _rollout_view(job: RLJob, pools: dict) -> st.RolloutView:
    pool_name = pool_name_for(job)
    if pool_name is None:
        return st.RolloutView(colocated=True)
    pool = pools.get(pool_name) or {}
    ready = st.find((pool.get("status") or {}).get("conditions"), READY) or {}
    rejected = f"RolloutPool {pool_name}: {ready.get('message')}" if ready.get("reason") == PODS_REJECTED else None
    desired = RolloutPoolSpec.model_validate(pool.get("spec") or {}).replicas if pool else 0  # no pool yet: none
    return st.RolloutView(colocated=False, ready=(pool.get("status") or {}).get("readyReplicas", 0), desired=desired,
                          rejected=rejected)


def reconcile_job(body: Mapping, trigger: str) -> None:
    reconcile_fresh("RLJob", body, trigger, lambda fresh: _reconcile_job(fresh, fresh["metadata"]["namespace"], fresh["metadata"]["name"]))


def _reconcile_job(body: dict, namespace: str, name: str) -> None:
    now = time.time()
    job = _parse_job(body)
    old_status = copy.deepcopy(body.get("status") or {})
    conds = old_status.get("conditions") or []
    generation = body["metadata"].get("generation")
    lookups, pools, envs = _lookups(job, namespace)
    errors = semantics.semantic_errors(job, lookups, access_policy())
    failed = st.find(conds, FAILED)
    invalid_before = failed is not None and failed.get("status") == "True" and failed.get("reason") == INVALID_SPEC
    started = st.is_true(conds, CREATED)

    if errors and not started:
        message = semantics.describe(errors)
        new_conds = st.set_condition(conds, FAILED, True, INVALID_SPEC, message, now=now, generation=generation)
        new_conds = st.set_condition(new_conds, CREATED, False, INVALID_SPEC, "children are not created for an invalid spec", now=now, generation=generation)
        if not invalid_before or failed.get("message") != message:
            _event(body, "Warning", INVALID_SPEC, message)
            log.warning("invalid RLJob spec", namespace=namespace, name=name, errors=message)
        new_status = {"conditions": new_conds, "phase": st.phase_of(new_conds), "observedGeneration": generation}
        patch_status("RLJob", namespace, name, old_status, new_status)
        RT.phases.set(body["metadata"]["uid"], new_status["phase"])
        return
    if invalid_before:
        # The spec was fixed (or what it refers to appeared): the job may start after all.
        conds = st.set_condition(conds, FAILED, False, SPEC_VALID, "", now=now, generation=generation)
        _event(body, "Normal", SPEC_VALID, "the spec is valid now; creating the job's children")

    finished = st.is_finished(conds)
    created = (True, CHILDREN_CREATED, "")
    if not finished:
        try:
            created = _ensure_children(body, job, namespace, pools, envs)
        except KubeError as e:
            if not e.is_refusal:
                raise
            created = (False, CHILD_REJECTED, f"the API server refused a child of the job: {e.server_message}")
    elif st.find(conds, CREATED):
        c = st.find(conds, CREATED)
        created = (c["status"] == "True", c.get("reason", ""), c.get("message", ""))

    restarts = int(old_status.get("restarts", 0))
    view = lifecycle.JobView(
        name=name,
        replicas=job.spec.trainer.replicas,
        backoff_limit=job.spec.run_policy.backoff_limit,
        restarts=restarts,
        disruptions=int(old_status.get("disruptions", 0)),
        gang_was_ready=st.is_true(old_status.get("conditions") or [], TRAINER_READY),
        suspend=job.spec.suspend,
        finished=finished,
        completion_time=st.parse_rfc3339(old_status.get("completionTime")),
        start_time=st.parse_rfc3339(old_status.get("startTime")),
        active_deadline_s=job.spec.run_policy.active_deadline_seconds,
        ttl_after_finished_s=job.spec.run_policy.ttl_seconds_after_finished,
        pods=_pod_views(namespace, name, job.spec.trainer.replicas, finished),
        now=now,
    )
    plan = lifecycle.decide(view)
    if plan.delete_job:
        log.info("deleting finished RLJob after its TTL", namespace=namespace, name=name)
        RT.kube.delete(API_VERSION, "RLJob", namespace, name, propagation="Background")
        return
    if plan.restarted:
        # Count the restart before deleting anything: a crash in between then cannot
        # restart twice (the old generation's pods are stale and deleted on sight).
        RT.kube.patch(API_VERSION, "RLJob", namespace, name, {"status": {"restarts": plan.restarts, "disruptions": plan.disruptions}},
                      subresource="status")
        old_status["restarts"], old_status["disruptions"] = plan.restarts, plan.disruptions
        metrics.GANG_RESTARTS.inc()
        _event(body, "Warning", "GangRestart", plan.restarted)
    for pod in plan.delete:
        RT.kube.delete("v1", "Pod", namespace, pod)
    if plan.create and created[0]:
        try:
            for index in plan.create:
                ensure(trainer_pod(job, namespace, index, plan.restarts, RT.settings), body)
        except KubeError as e:
            if not e.is_refusal:
                raise
            created = (False, CHILD_REJECTED, f"the API server refused trainer pod {index}: {e.server_message}")
    pool_name = pool_name_for(job)
    # A pause only changes an annotation (the children's spec handlers do not fire), so
    # the child is reconciled here at once: its Deployment scales now, not on its next
    # periodic round, and the pool status read below is one taken after the change.
    if pool_name and pools.get(pool_name) is not None and _controller_uid(pools[pool_name]) == body["metadata"]["uid"]:
        if _set_paused(API_VERSION, "RolloutPool", namespace, pools[pool_name], plan.pause_children):
            reconcile_pool(pools[pool_name], "paused" if plan.pause_children else "unpaused")
            pools[pool_name] = RT.kube.get(API_VERSION, "RolloutPool", namespace, pool_name)
    elif pool_name and (finished or plan.terminal is not None):
        _release_shared_pool(body, namespace, name, pools.get(pool_name))
    for entry in job.spec.agent_envs or []:
        env = envs.get(entry.name)
        if entry.spec is not None and env is not None and _controller_uid(env) == body["metadata"]["uid"]:
            if _set_paused(API_VERSION, "AgentEnv", namespace, env, plan.pause_children):
                reconcile_env(env, "paused" if plan.pause_children else "unpaused")

    # The buffer: unreachable while creating the streams, or when reading progress fails.
    state: dict | None = None
    buffer_seen: tuple[bool, str] | None = None
    if not created[0] and created[1] == BUFFER_UNAVAILABLE:
        buffer_seen = (False, created[2])
    elif created[0]:
        try:
            state = RT.nats.job_state(job.spec.buffer.url, namespace, name, auth=_buffer_auth(job))
            buffer_seen = (True, f"JetStream at {access.redact_url(job.spec.buffer.url)} reachable")
        except Exception as e:  # noqa: BLE001 (progress is best effort; the next round retries)
            buffer_seen = (False, f"reading job state from JetStream at {access.redact_url(job.spec.buffer.url)} failed: {e}")
    new_conds = st.job_conditions(
        conds,
        buffer=buffer_seen,
        created=created,
        trainer=st.TrainerView(replicas=job.spec.trainer.replicas, ready=plan.ready),
        rollout=_rollout_view(job, pools),
        suspended=job.spec.suspend,
        terminal=plan.terminal,
        now=now,
        generation=generation,
    )
    new_status: dict[str, Any] = {
        "conditions": new_conds,
        "phase": st.phase_of(new_conds),
        "observedGeneration": generation,
        "restarts": plan.restarts,
        "disruptions": plan.disruptions,
        # The clock starts when the gang is really created, not while creation waits on the buffer.
        "startTime": st.rfc3339(plan.start_time) if plan.start_time is not None and (created[0] or view.start_time) else None,
    }
    if plan.terminal and not old_status.get("completionTime"):
        new_status["completionTime"] = st.rfc3339(now)
    rollout = _rollout_view(job, pools)
    if not rollout.colocated:
        new_status["rollout"] = {"ready": rollout.ready, "desired": rollout.desired, "summary": f"{rollout.ready}/{rollout.desired}"}
    if state is not None:
        stages = tuple(stage.name for stage in job.spec.curriculum.stages) if job.spec.curriculum else ()
        progress, sample = st.progress(state, max_steps=job.spec.run_policy.max_steps, previous=RT.rate_samples.get(body["metadata"]["uid"]),
                                       now=now, stage_names=stages)
        if sample is not None:
            RT.rate_samples[body["metadata"]["uid"]] = sample
        new_status.update(progress)
    elif created[0]:
        new_status.setdefault("maxSteps", job.spec.run_policy.max_steps)
    for event in [*st.transition_events(conds, new_conds), *st.rejection_events(conds, new_conds),
                  *st.progress_events(old_status, new_status)]:
        _event(body, event.type, event.reason, event.message)
    patch_status("RLJob", namespace, name, old_status, new_status)
    RT.phases.set(body["metadata"]["uid"], new_status["phase"])


def _release_shared_pool(job_body: Mapping | None, namespace: str, job: str, pool: dict | None) -> None:
    """Let go of a shared pool the (finished or deleted) job was bound to: minReplicas, unbound."""
    release = lifecycle.release_shared_pool(job, pool, owned=False, done=True)
    if release is None or pool is None:
        return
    pool_name = pool["metadata"]["name"]
    if release.replicas is not None:
        RT.kube.patch(API_VERSION, "RolloutPool", namespace, pool_name, {"spec": {"replicas": release.replicas}})
    if release.unbind:
        RT.kube.patch(API_VERSION, "RolloutPool", namespace, pool_name, {"status": {"boundJob": None}}, subresource="status")
    log.info("shared rollout pool released", namespace=namespace, job=job, pool=pool_name, replicas=release.replicas)
    if job_body is not None:
        _event(job_body, "Normal", "PoolReleased", release.message)
    _event(pool, "Normal", "Released", release.message)


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
        _release_shared_pool(None, namespace, name, RT.kube.get(API_VERSION, "RolloutPool", namespace, pool_ref))
    buffer = spec.get("buffer") or {}
    url = buffer.get("url") or buffer_default_url()
    try:
        auth = buffer_auth(namespace, credential_secrets(spec)["buffer_credentials_secret"])
        deleted = RT.nats.delete_job(url, namespace, name, auth=auth)
    except Exception as e:
        where = access.redact_url(url)
        if retry + 1 >= RT.settings.finalizer_retries:
            message = (f"gave up deleting the job's JetStream streams and KV bucket at {where} after {retry + 1} attempts ({e}); "
                       f"delete them by hand (`nats stream rm`) or they expire with the server's limits")
            _event(body, "Warning", "BufferCleanupAbandoned", message)
            log.warning("finaliser gave up on the buffer", namespace=namespace, name=name, error=str(e))
            RT.forget(uid)
            return
        raise kopf.TemporaryError(f"deleting the job's JetStream streams at {where} failed: {e}", delay=FINALIZER_RETRY_DELAY_S) from e
    log.info("RLJob deleted", namespace=namespace, name=name, streams=deleted)
    RT.forget(uid)
