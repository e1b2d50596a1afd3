"""The AgentEnv controller: Deployment, Service, NetworkPolicy and status."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import kopf

from kuberl.operator.api import AgentEnv
from kuberl.operator.api.conditions import INVALID_SPEC, NO_POD_READY, PODS_READY, READY
from kuberl.operator.api.constants import GROUP, VERSION
from kuberl.operator.children.desired import env_children
from kuberl.operator.controllers.runtime import (
    PERIODIC,
    handled,
    RT,
    _event,
    access_policy,
    ensure_asserted,
    ensure_workload,
    guarded,
    patch_status,
    reconcile_fresh,
)
from kuberl.operator.decisions import access
from kuberl.operator.decisions import references as semantics
from kuberl.operator.decisions import status as st
from kuberl.operator.naming import agent_env_url
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)


def reconcile_env(body: Mapping, trigger: str) -> None:
    reconcile_fresh("AgentEnv", body, trigger, guarded("AgentEnv", _reconcile_env))


def _reconcile_env(fresh: dict) -> None:
    namespace, name = fresh["metadata"]["namespace"], fresh["metadata"]["name"]
    env = AgentEnv.model_validate({"metadata": fresh["metadata"], "spec": fresh.get("spec") or {}})
    old = fresh.get("status") or {}
    errors = access.sandbox_errors(env.spec, "spec", access_policy())
    if errors:
        # Refused before any pod exists: a sandbox switched off against the installation's policy.
        message = semantics.describe(errors)
        conds = st.set_condition(old.get("conditions"), READY, False, INVALID_SPEC, message, now=time.time(),
                                 generation=fresh["metadata"].get("generation"))
        if (st.find(old.get("conditions"), READY) or {}).get("message") != message:
            _event(fresh, "Warning", INVALID_SPEC, message)
        patch_status("AgentEnv", namespace, name, old,
                     {"conditions": conds, "observedGeneration": fresh["metadata"].get("generation")})
        return
    children = env_children(env, RT.settings)
    deployment = children.deployment
    live = RT.watched.get("apps/v1", "Deployment", namespace, name)
    live = ensure_workload(deployment, fresh, live) or live or {}
    ensure_asserted(children.service, fresh)
    ensure_asserted(children.ingress, fresh)
    if children.deny_egress is not None:
        ensure_asserted(children.deny_egress, fresh)
    elif RT.watched.get("networking.k8s.io/v1", "NetworkPolicy", namespace, children.deny_egress_name) is not None:
        RT.kube.delete("networking.k8s.io/v1", "NetworkPolicy", namespace, children.deny_egress_name)
    desired = deployment["spec"]["replicas"]
    new = st.workload_status(old, live.get("status") or {}, desired, what="pods", reasons=(PODS_READY, NO_POD_READY),
                             ready_if_empty=desired == 0, now=time.time(),
                             generation=fresh["metadata"].get("generation"))
    new["endpoint"] = agent_env_url(namespace, name, env.spec.port)
    for event in st.rejection_events(old.get("conditions"), new["conditions"]):
        _event(fresh, event.type, event.reason, event.message)
    patch_status("AgentEnv", namespace, name, old, new)


@kopf.on.create(GROUP, VERSION, "agentenvs")
def env_created(body: kopf.Body, retry: int, **_: Any) -> None:
    handled("AgentEnv", retry, lambda: reconcile_env(body, "create"))


@kopf.on.update(GROUP, VERSION, "agentenvs", field="spec")
def env_changed(body: kopf.Body, retry: int, **_: Any) -> None:
    handled("AgentEnv", retry, lambda: reconcile_env(body, "update"))


def env_round(body: Mapping) -> None:
    """The periodic round the sweeper runs (controllers.sweeper)."""
    reconcile_env(body, PERIODIC)
