"""kopf handlers for RLJob, RolloutPool and AgentEnv. Thin: observe, decide (pure modules), act.

Reconciliation is level-triggered. Change events (create, resume, spec update) and a
timer all call the same `reconcile_*` function, which reads the cluster, asks the pure
modules what should be, and makes it so with create-or-get calls on deterministic names.
A per-object lock keeps an event handler and the timer from interleaving, and nothing is
remembered between rounds that the cluster does not also hold (restarts, times and
conditions live in status), so a restarted operator picks up where the last one stopped.

Handlers are synchronous on purpose: kopf runs them in worker threads, and the few NATS
calls go through `NatsBridge` (one asyncio loop, one connection per server).
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

import kopf

from kuberl.operator import autoscaler, builders, lifecycle, metrics, semantics
from kuberl.operator import status as st
from kuberl.operator.api import AgentEnv, RLJob, RolloutPool
from kuberl.operator.kubeio import Kube, api_client_from_environment
from kuberl.operator.natsbridge import NatsBridge
from kuberl.operator.resync import EnsureCache
from kuberl.operator.settings import MANAGED_BY, OperatorSettings
from kuberl.workloads import buffer
from kuberl.workloads.logs import get_logger

log = get_logger("kuberl.operator")

GROUP, VERSION = "kuberl.io", "v1alpha1"
API = f"{GROUP}/{VERSION}"
SPEC_HASH_ANNOTATION = "kuberl.io/template-hash"

SETTINGS = OperatorSettings.from_env()


class Runtime:
    """Process-wide state: API and NATS clients, per-object locks, rate samples."""

    def __init__(self, settings: OperatorSettings):
        self.settings = settings
        self._kube: Kube | None = None
        self._nats: NatsBridge | None = None
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.phases = metrics.PhaseBook()
        self.rate_samples: dict[str, tuple[float, int]] = {}
        self.streams_ready: set[tuple[str, str]] = set()  # (uid, url)
        self.last_autoscale_eval: dict[str, float] = {}
        self.ensured = EnsureCache(settings.resync_period_s)

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = Kube(api_client_from_environment(pool_size=self.settings.executor_threads + 8))
        return self._kube

    @property
    def nats(self) -> NatsBridge:
        if self._nats is None:
            self._nats = NatsBridge(self.settings.nats_timeout_s)
        return self._nats

    def lock(self, uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(uid, threading.Lock())

    def forget(self, uid: str) -> None:
        with self._locks_guard:
            self._locks.pop(uid, None)
        self.rate_samples.pop(uid, None)
        self.last_autoscale_eval.pop(uid, None)
        self.streams_ready = {k for k in self.streams_ready if k[0] != uid}
        self.ensured.invalidate(uid)
        self.phases.forget(uid)


RT = Runtime(SETTINGS)


def plain(obj: Any) -> Any:
    """A kopf body (mapping views) as plain dicts and lists, safe to keep and mutate."""
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def managed_by_us(spec: Mapping, **_: Any) -> bool:
    """spec.managedBy empty or ours: otherwise another controller (e.g. MultiKueue) owns the job."""
    return spec.get("managedBy") in (None, "", MANAGED_BY)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _controller_uid(obj: Mapping | None) -> str | None:
    for ref in (obj or {}).get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def _event(body: Mapping, type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message[:1000])


def ensure(child: dict[str, Any], owner: Mapping) -> tuple[dict[str, Any], bool]:
    """Create-or-get a child owned by `owner` (so deleting the owner collects it)."""
    kopf.adopt(child, owner=owner)
    obj, created = RT.kube.create(child)
    if created:
        metrics.CHILDREN_CREATED.labels(child["kind"]).inc()
    return obj, created


def ensure_cached(child: dict[str, Any], owner: Mapping, trigger: str, digest_of: Any = None) -> tuple[dict[str, Any] | None, bool]:
    """`ensure`, skipped on timer rounds while the child was asserted unchanged recently
    (see `resync`): (object or None when skipped, created)."""
    owner_uid = owner["metadata"]["uid"]
    key = f"{child['kind']}/{child['metadata']['name']}"
    digest = _hash(child if digest_of is None else digest_of)
    now = time.monotonic()
    if trigger == "timer" and RT.ensured.fresh(owner_uid, key, digest, now):
        return None, False
    obj, created = ensure(child, owner)
    if obj is not child:  # `create` hands the manifest back when the object vanished mid-call: not asserted
        RT.ensured.asserted(owner_uid, key, digest, now)
    return obj, created


def ensure_workload(child: dict[str, Any], owner: Mapping, live: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Create-or-update a Deployment: the template is replaced when its hash changes, the
    replica count whenever it differs (so `kubectl scale` on the parent reaches the pods).

    `live` is the Deployment as just read (the caller needs its status anyway), so an
    existing one costs no create-or-get; None creates it. Returns what was created, else None."""
    template_hash = _hash(child["spec"]["template"])
    child["metadata"].setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = template_hash
    if live is None:
        existing, created = ensure(child, owner)
        if created:
            return existing
    else:
        existing = live
    patch: dict[str, Any] = {}
    if existing.get("metadata", {}).get("annotations", {}).get(SPEC_HASH_ANNOTATION) != template_hash:
        patch = {"metadata": {"annotations": {SPEC_HASH_ANNOTATION: template_hash}}, "spec": {"template": child["spec"]["template"]}}
    if existing.get("spec", {}).get("replicas") != child["spec"]["replicas"]:
        patch.setdefault("spec", {})["replicas"] = child["spec"]["replicas"]
    if patch:
        meta = child["metadata"]
        RT.kube.patch(child["apiVersion"], child["kind"], meta["namespace"], meta["name"], patch)
    return None


def _set_paused(api_version: str, kind: str, namespace: str, obj: dict[str, Any] | None, paused: bool) -> bool:
    """Pause or unpause a child; True when this call changed it."""
    if obj is None or builders.is_paused(obj["metadata"]) == paused:
        return False
    value = "true" if paused else None  # merge-patch null removes the annotation
    RT.kube.patch(api_version, kind, namespace, obj["metadata"]["name"], {"metadata": {"annotations": {builders.PAUSED_ANNOTATION: value}}})
    return True


# =======================================================================================
# Operator-wide setup


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Progress and diff-base in annotations under our own prefix: our CRDs' status schema
    # is structural, so kopf's default status.kopf field would be pruned by the server.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kuberl.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kuberl.io", key="last-handled-configuration")
    settings.persistence.finalizer = "kuberl.io/finalizer"
    settings.posting.reporting_component = "kuberl-operator"
    settings.posting.level = 20  # INFO: our Events, not kopf's per-handler chatter
    settings.posting.loggers = False
    settings.execution.max_workers = RT.settings.executor_threads
    # On deletion kopf stops an object's timers before it removes the finalizer, and by
    # default looks again only every 60 s: a deleted job would linger a minute after its
    # finaliser ran. Our timers finish a round in well under a second.
    settings.background.cancellation_polling = 1.0
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    metrics.serve(RT.settings.metrics_port)
    log.info("operator configured", settings={k: v for k, v in vars(RT.settings).items() if k != "extra_labels"})


@kopf.on.cleanup()
def shutdown(**_: Any) -> None:
    if RT._nats is not None:
        RT._nats.close()


# =======================================================================================
# RLJob


def _parse_job(body: Mapping) -> RLJob:
    data = plain(body)
    return RLJob.model_validate({"metadata": data.get("metadata", {}), "spec": data.get("spec", {})})


def _pool_spec_of(job: RLJob, pool: dict[str, Any] | None) -> dict[str, Any] | None:
    if pool is not None:
        return pool.get("spec")
    inline = builders.inline_rollout_pool(job, job.metadata.get("namespace", ""), RT.settings)
    return inline["spec"] if inline else None


def _lookups(job: RLJob, namespace: str) -> tuple[semantics.Lookups, dict[str, dict | None], dict[str, dict | None]]:
    pool_names, env_names = semantics.referenced_names(job)
    pools = {n: RT.kube.get(API, "RolloutPool", namespace, n) for n in pool_names}
    envs = {n: RT.kube.get(API, "AgentEnv", namespace, n) for n in env_names}
    active: frozenset[str] = frozenset()
    busy = [p.get("status", {}).get("boundJob") for p in pools.values() if p]
    busy = [b for b in busy if b and b != job.metadata["name"]]
    if busy:
        active = frozenset(b for b in busy if (other := RT.kube.get(API, "RLJob", namespace, b))
                           and not st.is_finished((other.get("status") or {}).get("conditions")))

    def existing(obj: dict | None) -> semantics.Existing | None:
        if obj is None:
            return None
        return semantics.Existing(owner_uid=_controller_uid(obj), spec=obj.get("spec") or {}, bound_job=(obj.get("status") or {}).get("boundJob"))

    lookups = semantics.Lookups(pools={n: existing(o) for n, o in pools.items()}, envs={n: existing(o) for n, o in envs.items()}, active_jobs=active)
    return lookups, pools, envs


def _env_urls(job: RLJob, namespace: str, envs: dict[str, dict | None]) -> dict[str, str]:
    urls = {}
    for entry in job.spec.agent_envs or []:
        port = entry.spec.port if entry.spec is not None else ((envs.get(entry.name) or {}).get("spec") or {}).get("port", 8080)
        urls[entry.name] = builders.agent_env_url(namespace, entry.name, port)
    return urls


def _buffer_config(job: RLJob) -> buffer.BufferConfig:
    b = job.spec.buffer
    return buffer.BufferConfig(replicas=b.stream_replicas, max_in_flight_prompts=b.max_in_flight_prompts, trajectories_max_bytes=b.max_stream_bytes)


def _ensure_children(body: Mapping, job: RLJob, namespace: str, pools: dict, envs: dict, trigger: str = "timer") -> tuple[bool, str, str]:
    """ConfigMap, rendezvous Service, owned pool and envs, streams; (ok, reason, message) for Created.

    The pool and envs were read this round (`_lookups`): only missing ones are created.
    The ConfigMap and Service are asserted on change events, when their manifest changes,
    and once per resync period otherwise (`ensure_cached`)."""
    name = job.metadata["name"]
    settings = RT.settings
    pool_name = builders.pool_name_for(job)
    pool = pools.get(pool_name) if pool_name else None
    config_map = builders.job_config_map(job, namespace, settings, pool_spec=_pool_spec_of(job, pool), agent_env_urls=_env_urls(job, namespace, envs))
    existing, created = ensure_cached(config_map, body, trigger)
    if existing is not None and not created and existing.get("data") != config_map["data"]:
        RT.kube.patch("v1", "ConfigMap", namespace, config_map["metadata"]["name"], {"data": config_map["data"]})
    ensure_cached(builders.trainer_service(job, namespace, settings), body, trigger)
    inline_pool = builders.inline_rollout_pool(job, namespace, settings)
    if inline_pool is not None:
        obj = pools.get(inline_pool["metadata"]["name"])
        created = False
        if obj is None:
            obj, created = ensure(inline_pool, body)
        if not created and obj.get("spec") != inline_pool["spec"] and _controller_uid(obj) == job.metadata.get("uid"):
            # The job's template changed: carry it over, keeping the replica count the autoscaler chose.
            spec = dict(inline_pool["spec"])
            if (obj.get("spec") or {}).get("autoscaling", {}).get("enabled", True):
                spec["replicas"] = obj["spec"].get("replicas", spec.get("replicas"))
            RT.kube.patch(API, "RolloutPool", namespace, inline_pool["metadata"]["name"], {"spec": spec})
        pools[inline_pool["metadata"]["name"]] = obj
    for env in builders.inline_agent_envs(job, namespace, settings):
        obj = envs.get(env["metadata"]["name"])
        created = False
        if obj is None:
            obj, created = ensure(env, body)
        if not created and obj.get("spec") != env["spec"] and _controller_uid(obj) == job.metadata.get("uid"):
            RT.kube.patch(API, "AgentEnv", namespace, env["metadata"]["name"], {"spec": env["spec"]})
        envs[env["metadata"]["name"]] = obj
    if pool_name and pools.get(pool_name) is not None and (pools[pool_name].get("status") or {}).get("boundJob") != name:
        RT.kube.patch(API, "RolloutPool", namespace, pool_name, {"status": {"boundJob": name}}, subresource="status")
    url = job.spec.buffer.url
    key = (job.metadata.get("uid") or name, url)
    if key not in RT.streams_ready:
        try:
            RT.nats.ensure_job(url, namespace, name, _buffer_config(job))
            RT.streams_ready.add(key)
        except Exception as e:  # noqa: BLE001 (NATS down or unreachable: retried next round)
            return False, st.BUFFER_UNAVAILABLE, f"creating JetStream streams at {url} failed: {e}"
    return True, "ChildrenCreated", "config, rendezvous service, rollout pool, agent envs and streams exist"


def _pod_views(namespace: str, name: str) -> tuple[lifecycle.PodView, ...]:
    views = []
    for pod in RT.kube.list("v1", "Pod", namespace, builders.trainer_selector(name)):
        meta, status = pod["metadata"], pod.get("status") or {}
        labels = meta.get("labels") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        views.append(lifecycle.PodView(
            name=meta["name"],
            index=int(labels.get(builders.LABEL_REPLICA_INDEX, -1)),
            generation=int(labels.get(builders.LABEL_GANG_GENERATION, -1)),
            phase=status.get("phase", "Pending"),
            ready=ready,
            deleting=bool(meta.get("deletionTimestamp")),
            message=status.get("message", ""),
        ))
    return tuple(views)


def _rollout_view(job: RLJob, pools: dict) -> st.RolloutView:
    pool_name = builders.pool_name_for(job)
    if pool_name is None:
        return st.RolloutView(colocated=True)
    pool = pools.get(pool_name) or {}
    return st.RolloutView(colocated=False, ready=(pool.get("status") or {}).get("readyReplicas", 0), desired=(pool.get("spec") or {}).get("replicas", 0))


def _patch_job_status(body: Mapping, namespace: str, name: str, old_status: dict, new_status: dict) -> None:
    changed = {k: v for k, v in new_status.items() if old_status.get(k) != v}
    if changed:
        RT.kube.patch(API, "RLJob", namespace, name, {"status": changed}, subresource="status")


def reconcile_job(body: Mapping, trigger: str) -> None:
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    if meta.get("deletionTimestamp"):
        return
    with RT.lock(uid), metrics.reconciling("RLJob", trigger):
        fresh = RT.kube.get(API, "RLJob", namespace, name)  # the body kopf holds may be a few events old
        if fresh is None or fresh["metadata"].get("uid") != uid:
            return
        _reconcile_job(fresh, namespace, name, trigger)


def _reconcile_job(body: dict, namespace: str, name: str, trigger: str = "timer") -> None:
    now = time.time()
    job = _parse_job(body)
    old_status = copy.deepcopy(body.get("status") or {})
    conds = old_status.get("conditions") or []
    generation = body["metadata"].get("generation")
    lookups, pools, envs = _lookups(job, namespace)
    errors = semantics.semantic_errors(job, lookups)
    failed = st.find(conds, st.FAILED)
    invalid_before = failed is not None and failed.get("status") == "True" and failed.get("reason") == st.INVALID_SPEC
    started = st.is_true(conds, st.CREATED)

    if errors and not started:
        message = semantics.describe(errors)
        new_conds = st.set_condition(conds, st.FAILED, True, st.INVALID_SPEC, message, now=now, generation=generation)
        new_conds = st.set_condition(new_conds, st.CREATED, False, st.INVALID_SPEC, "children are not created for an invalid spec", now=now, generation=generation)
        if not invalid_before or failed.get("message") != message:
            _event(body, "Warning", st.INVALID_SPEC, message)
            log.warning("invalid RLJob spec", namespace=namespace, name=name, errors=message)
        new_status = {"conditions": new_conds, "phase": st.phase_of(new_conds), "observedGeneration": generation}
        _patch_job_status(body, namespace, name, old_status, new_status)
        RT.phases.set(body["metadata"]["uid"], new_status["phase"])
        return
    if invalid_before:
        # The spec was fixed (or what it refers to appeared): the job may start after all.
        conds = st.set_condition(conds, st.FAILED, False, "SpecValid", "", now=now, generation=generation)
        _event(body, "Normal", "SpecValid", "the spec is valid now; creating the job's children")

    finished = st.is_finished(conds)
    created = (True, "ChildrenCreated", "")
    if not finished:
        created = _ensure_children(body, job, namespace, pools, envs, trigger)
    elif st.find(conds, st.CREATED):
        c = st.find(conds, st.CREATED)
        created = (c["status"] == "True", c.get("reason", ""), c.get("message", ""))

    restarts = int(old_status.get("restarts", 0))
    view = lifecycle.JobView(
        name=name,
        replicas=job.spec.trainer.replicas,
        backoff_limit=job.spec.run_policy.backoff_limit,
        restarts=restarts,
        suspend=job.spec.suspend,
        finished=finished,
        completion_time=st.parse_rfc3339(old_status.get("completionTime")),
        start_time=st.parse_rfc3339(old_status.get("startTime")),
        active_deadline_s=job.spec.run_policy.active_deadline_seconds,
        ttl_after_finished_s=job.spec.run_policy.ttl_seconds_after_finished,
        pods=_pod_views(namespace, name),
        now=now,
    )
    plan = lifecycle.decide(view)
    if plan.delete_job:
        log.info("deleting finished RLJob after its TTL", namespace=namespace, name=name)
        RT.kube.delete(API, "RLJob", namespace, name, propagation="Background")
        return
    if plan.restarted:
        # Count the restart before deleting anything: a crash in between then cannot
        # restart twice (the old generation's pods are stale and deleted on sight).
        RT.kube.patch(API, "RLJob", namespace, name, {"status": {"restarts": plan.restarts}}, subresource="status")
        old_status["restarts"] = plan.restarts
        metrics.GANG_RESTARTS.inc()
        _event(body, "Warning", "GangRestart", plan.restarted)
    for pod in plan.delete:
        RT.kube.delete("v1", "Pod", namespace, pod)
    if plan.create and created[0]:
        for index in plan.create:
            ensure(builders.trainer_pod(job, namespace, index, plan.restarts, RT.settings), body)
    pool_name = builders.pool_name_for(job)
    # A pause only changes an annotation (the children's spec handlers do not fire), so
    # the child is reconciled here at once: its Deployment scales now, not on its next
    # timer, and the pool status read below is one taken after the change.
    if pool_name and pools.get(pool_name) is not None and _controller_uid(pools[pool_name]) == body["metadata"]["uid"]:
        if _set_paused(API, "RolloutPool", namespace, pools[pool_name], plan.pause_children):
            reconcile_pool(pools[pool_name], "paused" if plan.pause_children else "unpaused")
            pools[pool_name] = RT.kube.get(API, "RolloutPool", namespace, pool_name)
    elif pool_name and (finished or plan.terminal is not None):
        _release_shared_pool(body, namespace, name, pools.get(pool_name))
    for entry in job.spec.agent_envs or []:
        env = envs.get(entry.name)
        if entry.spec is not None and env is not None and _controller_uid(env) == body["metadata"]["uid"]:
            if _set_paused(API, "AgentEnv", namespace, env, plan.pause_children):
                reconcile_env(env, "paused" if plan.pause_children else "unpaused")

    # The buffer: unreachable while creating the streams, or when reading progress fails.
    state: dict | None = None
    buffer_seen: tuple[bool, str] | None = None
    if not created[0] and created[1] == st.BUFFER_UNAVAILABLE:
        buffer_seen = (False, created[2])
    elif created[0]:
        try:
            state = RT.nats.job_state(job.spec.buffer.url, namespace, name)
            buffer_seen = (True, f"JetStream at {job.spec.buffer.url} reachable")
        except Exception as e:  # noqa: BLE001 (progress is best effort; the next round retries)
            buffer_seen = (False, f"reading job state from JetStream at {job.spec.buffer.url} failed: {e}")
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
        # The clock starts when the gang is really created, not while creation waits on the buffer.
        "startTime": st.rfc3339(plan.start_time) if plan.start_time is not None and (created[0] or view.start_time) else None,
    }
    if plan.terminal and not old_status.get("completionTime"):
        new_status["completionTime"] = st.rfc3339(now)
    rollout = _rollout_view(job, pools)
    if not rollout.colocated:
        new_status["rollout"] = {"ready": rollout.ready, "desired": rollout.desired, "summary": f"{rollout.ready}/{rollout.desired}"}
    if state is not None:
        progress, sample = st.progress(state, max_steps=job.spec.run_policy.max_steps, previous=RT.rate_samples.get(body["metadata"]["uid"]), now=now)
        if sample is not None:
            RT.rate_samples[body["metadata"]["uid"]] = sample
        new_status.update(progress)
    elif created[0]:
        new_status.setdefault("maxSteps", job.spec.run_policy.max_steps)
    for event in st.transition_events(conds, new_conds):
        _event(body, event.type, event.reason, event.message)
    _patch_job_status(body, namespace, name, old_status, new_status)
    RT.phases.set(body["metadata"]["uid"], new_status["phase"])


def _release_shared_pool(job_body: Mapping | None, namespace: str, job: str, pool: dict | None) -> None:
    """Let go of a shared pool the (finished or deleted) job was bound to: minReplicas, unbound."""
    release = lifecycle.release_shared_pool(job, pool, owned=False, done=True)
    if release is None or pool is None:
        return
    pool_name = pool["metadata"]["name"]
    if release.replicas is not None:
        RT.kube.patch(API, "RolloutPool", namespace, pool_name, {"spec": {"replicas": release.replicas}})
    if release.unbind:
        RT.kube.patch(API, "RolloutPool", namespace, pool_name, {"status": {"boundJob": None}}, subresource="status")
    log.info("shared rollout pool released", namespace=namespace, job=job, pool=pool_name, replicas=release.replicas)
    if job_body is not None:
        _event(job_body, "Normal", "PoolReleased", release.message)
    _event(pool, "Normal", "Released", release.message)


@kopf.on.create(GROUP, VERSION, "rljobs", when=managed_by_us)
def rljob_created(body: kopf.Body, **_: Any) -> None:
    reconcile_job(body, "create")


@kopf.on.resume(GROUP, VERSION, "rljobs", when=managed_by_us)
def rljob_resumed(body: kopf.Body, **_: Any) -> None:
    reconcile_job(body, "resume")


@kopf.on.update(GROUP, VERSION, "rljobs", field="spec", when=managed_by_us)
def rljob_spec_changed(body: kopf.Body, **_: Any) -> None:
    reconcile_job(body, "update")


@kopf.timer(GROUP, VERSION, "rljobs", interval=SETTINGS.reconcile_interval_s, when=managed_by_us)
def rljob_timer(body: kopf.Body, **_: Any) -> None:
    try:
        reconcile_job(body, "timer")
    except Exception:  # noqa: BLE001 (logged and counted; the next tick tries again)
        log.exception("RLJob reconcile failed", namespace=body["metadata"]["namespace"], name=body["metadata"]["name"])


@kopf.on.delete(GROUP, VERSION, "rljobs", when=managed_by_us)
def rljob_deleted(body: kopf.Body, spec: kopf.Spec, namespace: str, name: str, uid: str, **_: Any) -> None:
    """The finaliser: Kubernetes collects owned children, but JetStream is not Kubernetes."""
    pool_ref = (spec.get("rollout") or {}).get("poolRef")
    if pool_ref and spec.get("mode", "decoupled") != "colocated":
        _release_shared_pool(None, namespace, name, RT.kube.get(API, "RolloutPool", namespace, pool_ref))
    url = (spec.get("buffer") or {}).get("url") or buffer_default_url()
    try:
        deleted = RT.nats.delete_job(url, namespace, name)
    except Exception as e:
        raise kopf.TemporaryError(f"deleting the job's JetStream streams at {url} failed: {e}", delay=5) from e
    log.info("RLJob deleted", namespace=namespace, name=name, streams=deleted)
    RT.forget(uid)


def buffer_default_url() -> str:
    from kuberl.workloads.jobspec import BufferSpec

    return BufferSpec().url


# =======================================================================================
# RolloutPool


def _bound_job(pool: dict) -> str | None:
    for ref in pool["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "RLJob" and ref.get("controller"):
            return ref["name"]
    return (pool.get("status") or {}).get("boundJob")


def reconcile_pool(body: Mapping, trigger: str, autoscale: bool = False) -> None:
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    if meta.get("deletionTimestamp"):
        return
    with RT.lock(uid), metrics.reconciling("RolloutPool", trigger):
        fresh = RT.kube.get(API, "RolloutPool", namespace, name)
        if fresh is None or fresh["metadata"].get("uid") != uid:
            return
        if autoscale:
            fresh = _autoscale(fresh, namespace, name) or fresh
        _reconcile_pool(fresh, namespace, name, trigger)


def _reconcile_pool(body: dict, namespace: str, name: str, trigger: str = "timer") -> None:
    pool = RolloutPool.model_validate({"metadata": body["metadata"], "spec": body.get("spec") or {}})
    bound = _bound_job(body)
    job_body = RT.kube.get(API, "RLJob", namespace, bound) if bound else None
    model = ((job_body or {}).get("spec") or {}).get("model") or {}
    deployment = builders.rollout_deployment(pool, namespace, RT.settings, bound_job=bound if job_body else None,
                                             model_source=model.get("source"), tokenizer=model.get("tokenizer"))
    live = RT.kube.get("apps/v1", "Deployment", namespace, name)
    live = ensure_workload(deployment, body, live) or live or {}
    ensure_cached(builders.rollout_service(pool, namespace, RT.settings), body, trigger)
    dstatus = live.get("status") or {}
    old = body.get("status") or {}
    new = {
        "replicas": dstatus.get("replicas", 0),
        "readyReplicas": st.counted_ready(dstatus.get("readyReplicas", 0), deployment["spec"]["replicas"]),
        "selector": builders.selector_string(builders.pool_selector(name)),
        "observedGeneration": body["metadata"].get("generation"),
    }
    if bound and job_body is not None:
        new["boundJob"] = bound
    ready = new["readyReplicas"] > 0 or pool.spec.replicas == 0
    conds = st.set_condition(old.get("conditions"), "Ready", ready, "EnginesReady" if ready else "NoEngineReady",
                             f"{new['readyReplicas']}/{deployment['spec']['replicas']} rollout pods ready", now=time.time(),
                             generation=body["metadata"].get("generation"))
    conds = [c for c in conds if c["type"] == "Ready"] + [c for c in conds if c["type"] != "Ready"]
    new["conditions"] = conds
    changed = {k: v for k, v in new.items() if old.get(k) != v}
    if changed:
        RT.kube.patch(API, "RolloutPool", namespace, name, {"status": changed}, subresource="status")


def _signals(job_body: dict | None, namespace: str) -> autoscaler.Signals:
    if job_body is None:
        return autoscaler.Signals()
    url = ((job_body.get("spec") or {}).get("buffer") or {}).get("url") or buffer_default_url()
    name = job_body["metadata"]["name"]
    try:
        backlog = RT.nats.backlog(url, namespace, name)
    except Exception:  # noqa: BLE001 (no signal this round: the policy then holds)
        return autoscaler.Signals()
    idle = None
    try:
        state = RT.nats.job_state(url, namespace, name) or {}
        idle = (state.get("metrics") or {}).get("trainer_idle_percent")
    except Exception:  # noqa: BLE001
        pass
    return autoscaler.Signals(pending_prompts=backlog.get("prompts"), trajectory_backlog=backlog.get("trajectories"), trainer_idle_percent=idle)


def _autoscale(body: dict, namespace: str, name: str) -> dict | None:
    """One autoscaler evaluation when due; returns the patched pool when replicas changed."""
    spec = body.get("spec") or {}
    autoscaling = spec.get("autoscaling") or {}
    if not autoscaling.get("enabled", True) or builders.is_paused(body["metadata"]):
        return None
    uid = body["metadata"]["uid"]
    now = time.time()
    if now - RT.last_autoscale_eval.get(uid, 0.0) < autoscaling.get("intervalSeconds", 15) - 0.05:
        return None
    RT.last_autoscale_eval[uid] = now
    bound = _bound_job(body)
    job_body = RT.kube.get(API, "RLJob", namespace, bound) if bound else None
    if job_body is not None and st.is_finished((job_body.get("status") or {}).get("conditions")):
        return None
    pool = RolloutPool.model_validate({"metadata": body["metadata"], "spec": spec})
    current = pool.spec.replicas
    decision = autoscaler.decide(current, _signals(job_body, namespace), autoscaler.Policy.from_spec(pool.spec),
                                 last_scale_time=st.parse_rfc3339((body.get("status") or {}).get("lastScaleTime")), now=now)
    metrics.AUTOSCALER_DECISIONS.labels(decision.reason).inc()
    if not decision.changes(current):
        log.debug("autoscaler holds", namespace=namespace, pool=name, reason=decision.reason, message=decision.message)
        return None
    patched = RT.kube.patch(API, "RolloutPool", namespace, name, {"spec": {"replicas": decision.replicas}})
    RT.kube.patch(API, "RolloutPool", namespace, name, {"status": {"lastScaleTime": st.rfc3339(now), "desiredReplicas": decision.replicas}}, subresource="status")
    _event(body, "Normal", decision.reason, decision.message)
    log.info("autoscaler scaled", namespace=namespace, pool=name, replicas=decision.replicas, reason=decision.reason, message=decision.message)
    return patched


@kopf.on.create(GROUP, VERSION, "rolloutpools")
@kopf.on.resume(GROUP, VERSION, "rolloutpools")
def pool_created(body: kopf.Body, **_: Any) -> None:
    reconcile_pool(body, "create")


@kopf.on.update(GROUP, VERSION, "rolloutpools", field="spec")
def pool_changed(body: kopf.Body, **_: Any) -> None:
    reconcile_pool(body, "update")


@kopf.timer(GROUP, VERSION, "rolloutpools", interval=SETTINGS.autoscaler_tick_s)
def pool_timer(body: kopf.Body, **_: Any) -> None:
    try:
        reconcile_pool(body, "timer", autoscale=True)
    except Exception:  # noqa: BLE001
        log.exception("RolloutPool reconcile failed", namespace=body["metadata"]["namespace"], name=body["metadata"]["name"])


# =======================================================================================
# AgentEnv


def reconcile_env(body: Mapping, trigger: str) -> None:
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    if meta.get("deletionTimestamp"):
        return
    with RT.lock(uid), metrics.reconciling("AgentEnv", trigger):
        fresh = RT.kube.get(API, "AgentEnv", namespace, name)
        if fresh is None or fresh["metadata"].get("uid") != uid:
            return
        env = AgentEnv.model_validate({"metadata": fresh["metadata"], "spec": fresh.get("spec") or {}})
        deployment = builders.agent_env_deployment(env, namespace, RT.settings)
        live = RT.kube.get("apps/v1", "Deployment", namespace, name)
        live = ensure_workload(deployment, fresh, live) or live or {}
        ensure_cached(builders.agent_env_service(env, namespace, RT.settings), fresh, trigger)
        policy = builders.agent_env_network_policy(env, namespace, RT.settings)
        policy_name = f"{name}-deny-egress"
        if policy is not None:
            ensure_cached(policy, fresh, trigger)
        else:
            key = f"NetworkPolicy/{policy_name}"  # asserted absent, with the same resync rule
            if not (trigger == "timer" and RT.ensured.fresh(uid, key, _hash(None), time.monotonic())):
                RT.kube.delete("networking.k8s.io/v1", "NetworkPolicy", namespace, policy_name)
                RT.ensured.asserted(uid, key, _hash(None), time.monotonic())
        dstatus = live.get("status") or {}
        old = fresh.get("status") or {}
        new = {
            "replicas": dstatus.get("replicas", 0),
            "readyReplicas": st.counted_ready(dstatus.get("readyReplicas", 0), deployment["spec"]["replicas"]),
            "endpoint": builders.agent_env_url(namespace, name, env.spec.port),
            "observedGeneration": fresh["metadata"].get("generation"),
        }
        ready = new["readyReplicas"] > 0 or deployment["spec"]["replicas"] == 0
        new["conditions"] = st.set_condition(old.get("conditions"), "Ready", ready, "PodsReady" if ready else "NoPodReady",
                                             f"{new['readyReplicas']}/{deployment['spec']['replicas']} pods ready", now=time.time(),
                                             generation=fresh["metadata"].get("generation"))
        changed = {k: v for k, v in new.items() if old.get(k) != v}
        if changed:
            RT.kube.patch(API, "AgentEnv", namespace, name, {"status": changed}, subresource="status")


@kopf.on.create(GROUP, VERSION, "agentenvs")
@kopf.on.resume(GROUP, VERSION, "agentenvs")
def env_created(body: kopf.Body, **_: Any) -> None:
    reconcile_env(body, "create")


@kopf.on.update(GROUP, VERSION, "agentenvs", field="spec")
def env_changed(body: kopf.Body, **_: Any) -> None:
    reconcile_env(body, "update")


@kopf.timer(GROUP, VERSION, "agentenvs", interval=SETTINGS.reconcile_interval_s)
def env_timer(body: kopf.Body, **_: Any) -> None:
    try:
        reconcile_env(body, "timer")
    except Exception:  # noqa: BLE001
        log.exception("AgentEnv reconcile failed", namespace=body["metadata"]["namespace"], name=body["metadata"]["name"])
