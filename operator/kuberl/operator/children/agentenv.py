"""An AgentEnv's children: the locked-down Deployment, its Service and NetworkPolicy. Pure."""

from __future__ import annotations

from typing import Any

from kuberl.operator.api import AgentEnv, RLJob
from kuberl.operator.api.constants import API_VERSION, LABEL_JOB, ROLE_AGENTENV
from kuberl.operator.children.common import (
    NON_ROOT_UID,
    apply_placement,
    common_labels,
    container_resources,
    deployment_manifest,
    env_list,
    is_paused,
    object_meta,
    user_env,
)
from kuberl.operator.naming import env_selector
from kuberl.operator.settings import OperatorSettings


def inline_agent_envs(job: RLJob, namespace: str, settings: OperatorSettings) -> list[dict[str, Any]]:
    """AgentEnvs declared inline in the job (owned by it); entries without spec refer to existing ones."""
    name = job.metadata["name"]
    out = []
    for entry in job.spec.agent_envs or []:
        if entry.spec is None:
            continue
        labels = {**common_labels(name, ROLE_AGENTENV, settings), LABEL_JOB: name}
        out.append({"apiVersion": API_VERSION, "kind": "AgentEnv", "metadata": object_meta(entry.name, namespace, labels), "spec": entry.spec.to_wire()})
    return out


def agent_env_deployment(env: AgentEnv, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """Environment pods, locked down: agents run model-written code in them."""
    name = env.metadata["name"]
    spec = env.spec
    sandbox = spec.sandbox
    selector = env_selector(name)
    labels = {**common_labels(name, ROLE_AGENTENV, settings), **selector}
    replicas = 0 if is_paused(env.metadata) else spec.replicas
    env_vars = {
        "KUBERL_ROLE": ROLE_AGENTENV,
        "KUBERL_ENV_NAME": name,
        "KUBERL_ENV_TASK": spec.task,
        "KUBERL_ENV_PORT": str(spec.port),
        "KUBERL_ENV_CONCURRENCY": str(spec.concurrency_per_replica),
        "KUBERL_EPISODE_TIMEOUT_SECONDS": str(spec.episode_timeout_seconds),
    }
    if spec.latency is not None:
        env_vars.update({
            "KUBERL_ENV_LATENCY_DISTRIBUTION": spec.latency.distribution,
            "KUBERL_ENV_LATENCY_MEDIAN_SECONDS": str(spec.latency.median_seconds),
            "KUBERL_ENV_LATENCY_TAIL": str(spec.latency.tail),
        })
    container: dict[str, Any] = {
        "name": "env",
        "image": spec.image or settings.workload_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(spec.command) if spec.command else ["python", "-m", "kuberl.workloads.agentenv"],
        "env": env_list(env_vars) + user_env(spec.env),
        "ports": [{"name": "http", "containerPort": spec.port}],
        "resources": container_resources(spec.resources, 0),
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": spec.port}, "periodSeconds": 5},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": sandbox.read_only_root_filesystem,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
        },
    }
    if spec.args:
        container["args"] = list(spec.args)
    pod_security: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if sandbox.run_as_non_root:
        # runAsNonRoot alone rejects images whose USER is root; give them a non-root uid.
        pod_security.update({"runAsNonRoot": True, "runAsUser": NON_ROOT_UID, "runAsGroup": NON_ROOT_UID, "fsGroup": NON_ROOT_UID})
    volumes = []
    if sandbox.read_only_root_filesystem:
        container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
        volumes.append({"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}})
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": pod_security,
        # Environment code never needs the Kubernetes API; do not hand it a token.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if volumes:
        pod_spec["volumes"] = volumes
    if sandbox.runtime_class_name:
        pod_spec["runtimeClassName"] = sandbox.runtime_class_name
    apply_placement(pod_spec, spec.placement)
    return deployment_manifest(name, namespace, labels, selector, replicas, pod_spec)


def agent_env_service(env: AgentEnv, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    name = env.metadata["name"]
    selector = env_selector(name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(name, namespace, {**common_labels(name, ROLE_AGENTENV, settings), **selector}),
        "spec": {"selector": selector, "ports": [{"name": "http", "port": env.spec.port, "targetPort": env.spec.port}]},
    }


def agent_env_network_policy(env: AgentEnv, namespace: str, settings: OperatorSettings) -> dict[str, Any] | None:
    """Deny all egress from the environment pods (no exfiltration, no downloads); None when not asked."""
    if not env.spec.sandbox.deny_egress:
        return None
    name = env.metadata["name"]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(f"{name}-deny-egress", namespace, {**common_labels(name, ROLE_AGENTENV, settings), **env_selector(name)}),
        "spec": {"podSelector": {"matchLabels": env_selector(name)}, "policyTypes": ["Egress"], "egress": []},
    }


def agent_env_children(env: AgentEnv, namespace: str, settings: OperatorSettings) -> list[dict[str, Any]]:
    children = [agent_env_deployment(env, namespace, settings), agent_env_service(env, namespace, settings)]
    policy = agent_env_network_policy(env, namespace, settings)
    if policy is not None:
        children.append(policy)
    return children
