"""The RolloutPool controller: the Deployment, its status, and the autoscaler."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from kuberl.operator.adapters import metrics
from kuberl.operator.api import RLJob, RolloutPool
from kuberl.operator.api.conditions import ENGINES_READY, NO_ENGINE_READY, READY
from kuberl.operator.api.rolloutpool import RolloutPoolSpec
from kuberl.operator.api.constants import API_VERSION, GROUP, VERSION
from kuberl.operator.children.common import is_paused
from kuberl.operator.children.desired import pool_children
from kuberl.operator.children.rollout import credential_secrets
from kuberl.operator.controllers.runtime import (
    PERIODIC,
    handled,
    RT,
    _event,
    buffer_auth,
    buffer_default_url,
    ensure_asserted,
    ensure_workload,
    guarded,
    patch_status,
    plain,
    reconcile_fresh,
)
from kuberl.operator.decisions import autoscaler
from kuberl.operator.decisions import status as st
from kuberl.operator.naming import pool_selector, selector_string
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)


def _bound_job(pool: dict) -> str | None:
    for ref in pool["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "RLJob" and ref.get("controller"):
            return ref["name"]
    return (pool.get("status") or {}).get("boundJob")


def reconcile_pool(body: Mapping, trigger: str, autoscale: bool = False, full: bool = True) -> None:
    """One round on a pool. `autoscale`: evaluate the autoscaler first (when due); `full`:
    bring the children and status up to date even when the autoscaler changed nothing
    (the sweeper does that only once per reconcile interval: `pool_tick`)."""
    def round_(fresh: dict) -> None:
        namespace, name = fresh["metadata"]["namespace"], fresh["metadata"]["name"]
        if autoscale:
            patched = _autoscale(fresh, namespace, name)
            if patched is None and not full:
                return
            fresh = patched or fresh
        RT.last_pool_round[fresh["metadata"]["uid"]] = time.time()
        _reconcile_pool(fresh, namespace, name)

    reconcile_fresh("RolloutPool", body, trigger, guarded("RolloutPool", round_))


def _bound_job_object(body: dict, namespace: str) -> tuple[str | None, dict | None, RLJob | None]:
    """The job the pool serves: its name (owner reference or status.boundJob), its body as
    watched (None while it is not there) and that body parsed (None when it does not parse:
    the engines then start without its model, and the job's own round reports its spec)."""
    bound = _bound_job(body)
    job_body = RT.watched.get(API_VERSION, "RLJob", namespace, bound) if bound else None
    if job_body is None:
        return bound, None, None
    try:
        job = RLJob.model_validate({"metadata": job_body["metadata"], "spec": plain(job_body.get("spec") or {})})
    except ValidationError as e:
        log.warning("bound job does not parse", namespace=namespace, job=bound, error=str(e)[:300])
        job = None
    return bound, job_body, job


def _reconcile_pool(body: dict, namespace: str, name: str) -> None:
    pool = RolloutPool.model_validate({"metadata": body["metadata"], "spec": body.get("spec") or {}})
    bound, job_body, job = _bound_job_object(body, namespace)
    children = pool_children(pool, RT.settings, bound=job)
    deployment = children.deployment
    live = RT.watched.get("apps/v1", "Deployment", namespace, name)
    live = ensure_workload(deployment, body, live) or live or {}
    ensure_asserted(children.service, body)
    old = body.get("status") or {}
    new = st.workload_status(old, live.get("status") or {}, deployment["spec"]["replicas"], what="rollout pods",
                             reasons=(ENGINES_READY, NO_ENGINE_READY), ready_if_empty=pool.spec.replicas == 0,
                             now=time.time(), generation=body["metadata"].get("generation"))
    new["selector"] = selector_string(pool_selector(name))
    for event in st.rejection_events(old.get("conditions"), new["conditions"]):
        _event(body, event.type, event.reason, event.message)
    if bound and job_body is not None:
        new["boundJob"] = bound
        versions = _loaded_versions(job_body, namespace, name)
        if versions is not None:
            new["policyVersions"] = versions
    patch_status("RolloutPool", namespace, name, old, new)


def _loaded_versions(job_body: dict, namespace: str, pool: str) -> list[int] | None:
    """What the pool's ready pods report having loaded (rollout agents write it to the
    bound job's KV); None when the buffer cannot be read this round (the field then keeps
    its last value)."""
    ready = [p["metadata"]["name"] for p in RT.watched.list("v1", "Pod", namespace, pool_selector(pool))
             if st.is_true((p.get("status") or {}).get("conditions"), READY)]
    url = ((job_body.get("spec") or {}).get("buffer") or {}).get("url") or buffer_default_url()
    try:
        auth = buffer_auth(namespace, credential_secrets(job_body.get("spec"))["buffer_credentials_secret"])
        reported = RT.nats.agent_versions(url, namespace, job_body["metadata"]["name"], ready,
                                          auth=auth) if ready else {}
    except Exception:  # noqa: BLE001 (no reading this round)
        return None
    return st.loaded_versions(reported, ready)


def read_signals(job_body: dict | None, namespace: str) -> autoscaler.Signals:
    """What the autoscaler decides on, read from the bound job's buffer: backlogs and the
    trainer's idle share (its job state); a signal that cannot be read is left out."""
    if job_body is None:
        return autoscaler.Signals()
    url = ((job_body.get("spec") or {}).get("buffer") or {}).get("url") or buffer_default_url()
    name = job_body["metadata"]["name"]
    try:
        auth = buffer_auth(namespace, credential_secrets(job_body.get("spec"))["buffer_credentials_secret"])
        backlog = RT.nats.backlog(url, namespace, name, auth=auth)
    except Exception:  # noqa: BLE001 (no signal this round: the policy then holds)
        return autoscaler.Signals()
    idle = None
    try:
        state = RT.nats.job_state(url, namespace, name, auth=auth)
        idle = state.metrics.trainer_idle_percent if state is not None else None
    except Exception:  # noqa: BLE001
        pass
    return autoscaler.Signals(pending_prompts=backlog.get("prompts"), trajectory_backlog=backlog.get("trajectories"),
                              trainer_idle_percent=idle)


def _autoscaler_due(body: Mapping, now: float, spec: RolloutPoolSpec | None = None) -> bool:
    spec = spec or RolloutPoolSpec.model_validate(plain(body.get("spec") or {}))
    return autoscaler.evaluation_due(spec, is_paused(body["metadata"]),
                                     RT.last_autoscale_eval.get(body["metadata"]["uid"]), now)


def _autoscale(body: dict, namespace: str, name: str) -> dict | None:
    """One autoscaler evaluation when due; returns the patched pool when replicas changed."""
    pool = RolloutPool.model_validate({"metadata": body["metadata"], "spec": body.get("spec") or {}})
    uid = body["metadata"]["uid"]
    now = time.time()
    if not _autoscaler_due(body, now, pool.spec):
        return None
    RT.last_autoscale_eval[uid] = now
    bound = _bound_job(body)
    job_body = RT.watched.get(API_VERSION, "RLJob", namespace, bound) if bound else None
    if job_body is not None and st.is_finished((job_body.get("status") or {}).get("conditions")):
        return None
    current = pool.spec.replicas
    decision = autoscaler.decide(current, read_signals(job_body, namespace), autoscaler.Policy.from_spec(pool.spec),
                                 last_scale_time=st.parse_rfc3339((body.get("status") or {}).get("lastScaleTime")),
                                 now=now)
    metrics.AUTOSCALER_DECISIONS.labels(decision.reason).inc()
    if not decision.changes(current):
        log.debug("autoscaler holds", namespace=namespace, pool=name, reason=decision.reason, message=decision.message)
        return None
    patched = RT.kube.patch(API_VERSION, "RolloutPool", namespace, name, {"spec": {"replicas": decision.replicas}})
    RT.kube.patch(API_VERSION, "RolloutPool", namespace, name,
                  {"status": {"lastScaleTime": st.rfc3339(now), "desiredReplicas": decision.replicas}},
                  subresource="status")
    _event(body, "Normal", decision.reason, decision.message)
    log.info("autoscaler scaled", namespace=namespace, pool=name, replicas=decision.replicas, reason=decision.reason,
             message=decision.message)
    return patched


@kopf.on.create(GROUP, VERSION, "rolloutpools")
def pool_created(body: kopf.Body, retry: int, **_: Any) -> None:
    handled("RolloutPool", retry, lambda: reconcile_pool(body, "create"))


@kopf.on.update(GROUP, VERSION, "rolloutpools", field="spec")
def pool_changed(body: kopf.Body, retry: int, **_: Any) -> None:
    handled("RolloutPool", retry, lambda: reconcile_pool(body, "update"))


def pool_tick(body: Mapping) -> Callable[[], None] | None:
    """The sweeper's look at a pool (controllers.sweeper), at the autoscaler's pace: the
    round to run on a thread, or None. The rest of the round (Deployment, Service, status
    and the versions the pods loaded, read from the buffer) runs only once per reconcile
    interval, as for jobs and envs; a pool whose autoscaler is not due and whose round is
    not due costs no thread at all (at 500 pools that halved the buffer reads per second).
    Runs on the event loop: a dictionary lookup and the spec's few fields."""
    uid, now = body["metadata"]["uid"], time.time()
    full = autoscaler.round_due(RT.last_pool_round.get(uid), now, RT.settings.reconcile_interval_s)
    if not full and not _autoscaler_due(body, now):
        return None
    return lambda: reconcile_pool(body, PERIODIC, autoscale=True, full=full)
