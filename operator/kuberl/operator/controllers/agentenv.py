"""The AgentEnv controller: Deployment, Service, NetworkPolicy and status."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import kopf

from kuberl.operator.adapters import metrics
from kuberl.operator.api import AgentEnv
from kuberl.operator.api.constants import API_VERSION, GROUP, VERSION
from kuberl.operator.children.agentenv import (
    agent_env_deployment,
    agent_env_network_policy,
    agent_env_service,
)
from kuberl.operator.controllers.runtime import (
    RT,
    SETTINGS,
    _hash,
    ensure_cached,
    ensure_workload,
)
from kuberl.operator.decisions import status as st
from kuberl.operator.naming import agent_env_url
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)


def reconcile_env(body: Mapping, trigger: str) -> None:
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    if meta.get("deletionTimestamp"):
        return
    with RT.lock(uid), metrics.reconciling("AgentEnv", trigger):
        fresh = RT.kube.get(API_VERSION, "AgentEnv", namespace, name)
        if fresh is None or fresh["metadata"].get("uid") != uid:
            return
        env = AgentEnv.model_validate({"metadata": fresh["metadata"], "spec": fresh.get("spec") or {}})
        deployment = agent_env_deployment(env, namespace, RT.settings)
        live = RT.kube.get("apps/v1", "Deployment", namespace, name)
        live = ensure_workload(deployment, fresh, live) or live or {}
        ensure_cached(agent_env_service(env, namespace, RT.settings), fresh, trigger)
        policy = agent_env_network_policy(env, namespace, RT.settings)
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
            "endpoint": agent_env_url(namespace, name, env.spec.port),
            "observedGeneration": fresh["metadata"].get("generation"),
        }
        ready = new["readyReplicas"] > 0 or deployment["spec"]["replicas"] == 0
        new["conditions"] = st.set_condition(old.get("conditions"), "Ready", ready, "PodsReady" if ready else "NoPodReady",
                                             f"{new['readyReplicas']}/{deployment['spec']['replicas']} pods ready", now=time.time(),
                                             generation=fresh["metadata"].get("generation"))
        changed = {k: v for k, v in new.items() if old.get(k) != v}
        if changed:
            RT.kube.patch(API_VERSION, "AgentEnv", namespace, name, {"status": changed}, subresource="status")


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
