"""The AgentEnv controller: Deployment, Service, NetworkPolicy and status."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import kopf

from kuberl.operator.api import AgentEnv
from kuberl.operator.api.constants import GROUP, VERSION
from kuberl.operator.children.agentenv import (
    agent_env_deployment,
    agent_env_ingress_policy,
    agent_env_network_policy,
    agent_env_service,
)
from kuberl.operator.controllers.runtime import (
    RT,
    SETTINGS,
    _event,
    _hash,
    access_policy,
    ensure_cached,
    ensure_workload,
    guarded,
    patch_status,
    reconcile_fresh,
    timer_round,
)
from kuberl.operator.decisions import access
from kuberl.operator.decisions import references as semantics
from kuberl.operator.decisions import status as st
from kuberl.operator.naming import agent_env_url
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)


def reconcile_env(body: Mapping, trigger: str) -> None:
    reconcile_fresh("AgentEnv", body, trigger, guarded("AgentEnv", lambda fresh: _reconcile_env(fresh, trigger)))


def _reconcile_env(fresh: dict, trigger: str) -> None:
    namespace, name, uid = fresh["metadata"]["namespace"], fresh["metadata"]["name"], fresh["metadata"]["uid"]
    env = AgentEnv.model_validate({"metadata": fresh["metadata"], "spec": fresh.get("spec") or {}})
    old = fresh.get("status") or {}
    errors = access.sandbox_errors(env.spec, "spec", access_policy())
    if errors:
        # Refused before any pod exists: a sandbox switched off against the installation's policy.
        message = semantics.describe(errors)
        conds = st.set_condition(old.get("conditions"), "Ready", False, st.INVALID_SPEC, message, now=time.time(),
                                 generation=fresh["metadata"].get("generation"))
        if (st.find(old.get("conditions"), "Ready") or {}).get("message") != message:
            _event(fresh, "Warning", st.INVALID_SPEC, message)
        patch_status("AgentEnv", namespace, name, old, {"conditions": conds, "observedGeneration": fresh["metadata"].get("generation")})
        return
    deployment = agent_env_deployment(env, namespace, RT.settings)
    live = RT.kube.get("apps/v1", "Deployment", namespace, name)
    live = ensure_workload(deployment, fresh, live) or live or {}
    ensure_cached(agent_env_service(env, namespace, RT.settings), fresh, trigger)
    ensure_cached(agent_env_ingress_policy(env, namespace, RT.settings), fresh, trigger)
    policy = agent_env_network_policy(env, namespace, RT.settings)
    policy_name = f"{name}-deny-egress"
    if policy is not None:
        ensure_cached(policy, fresh, trigger)
    else:
        key = f"NetworkPolicy/{policy_name}"  # asserted absent, with the same resync rule
        if not (trigger == "timer" and RT.ensured.fresh(uid, key, _hash(None), time.monotonic())):
            RT.kube.delete("networking.k8s.io/v1", "NetworkPolicy", namespace, policy_name)
            RT.ensured.asserted(uid, key, _hash(None), time.monotonic())
    desired = deployment["spec"]["replicas"]
    new = st.workload_status(old, live.get("status") or {}, desired, what="pods", reasons=("PodsReady", "NoPodReady"),
                             ready_if_empty=desired == 0, now=time.time(), generation=fresh["metadata"].get("generation"))
    new["endpoint"] = agent_env_url(namespace, name, env.spec.port)
    for event in st.rejection_events(old.get("conditions"), new["conditions"]):
        _event(fresh, event.type, event.reason, event.message)
    patch_status("AgentEnv", namespace, name, old, new)


@kopf.on.create(GROUP, VERSION, "agentenvs")
@kopf.on.resume(GROUP, VERSION, "agentenvs")
def env_created(body: kopf.Body, **_: Any) -> None:
    reconcile_env(body, "create")


@kopf.on.update(GROUP, VERSION, "agentenvs", field="spec")
def env_changed(body: kopf.Body, **_: Any) -> None:
    reconcile_env(body, "update")


@kopf.timer(GROUP, VERSION, "agentenvs", interval=SETTINGS.reconcile_interval_s)
def env_timer(body: kopf.Body, **_: Any) -> None:
    timer_round("AgentEnv", body, lambda: reconcile_env(body, "timer"))
