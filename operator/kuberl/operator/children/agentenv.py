"""An AgentEnv's children: the locked-down Deployment, its Service and NetworkPolicy. Pure."""

from __future__ import annotations

from typing import Any

from kuberl.operator.api import AgentEnv, RLJob
from kuberl.operator.api.agentenv import AgentEnvSpec, LatencySpec
from kuberl.operator.api.constants import API_VERSION, LABEL_JOB, ROLE_AGENTENV
from kuberl.operator.children.common import (
    NON_ROOT_UID,
    apply_placement,
    common_labels,
    container_resources,
    deployment_manifest,
    is_paused,
    object_meta,
    user_env,
)
from kuberl.operator.naming import agent_env_url, env_selector
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


REFERENCE_SERVER = ("python", "-m", "kuberl.workloads.agentenv")


def agent_env_server_args(spec: AgentEnvSpec, *, host: str = "0.0.0.0", port: int | None = None) -> list[str]:
    """The reference server's command-line arguments for an AgentEnv spec: the one way its
    settings reach the server, in a pod and under `kuberl run` alike. Empty for your own
    server (spec.command set, or task custom), which gets only spec.args."""
    if spec.command or spec.task == "custom":
        return []
    latency = spec.latency or LatencySpec()
    return [
        "--host", host, "--port", str(spec.port if port is None else port), "--task", spec.task,
        "--concurrency", str(spec.concurrency_per_replica), "--episode-timeout", str(spec.episode_timeout_seconds),
        "--latency", latency.distribution, "--latency-median", str(latency.median_seconds), "--latency-tail", str(latency.tail),
    ]


def agent_env_deployment(env: AgentEnv, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """Environment pods, locked down: agents run model-written code in them."""
    name = env.metadata["name"]
    spec = env.spec
    sandbox = spec.sandbox
    selector = env_selector(name)
    labels = {**common_labels(name, ROLE_AGENTENV, settings), **selector}
    replicas = 0 if is_paused(env.metadata) else spec.replicas
    container: dict[str, Any] = {
        "name": "env",
        "image": spec.image or settings.workload_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(spec.command) if spec.command else list(REFERENCE_SERVER),
        "env": user_env(spec.env),
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
    args = agent_env_server_args(spec) + list(spec.args or [])
    if args:
        container["args"] = args
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


def agent_env_urls(job: RLJob, namespace: str, existing: dict[str, AgentEnvSpec | None]) -> dict[str, str]:
    """Where each of the job's agent environments answers: its Service, on the port of its
    inline spec or of the existing AgentEnv it names (``existing``, as read)."""
    urls = {}
    for entry in job.spec.agent_envs or []:
        spec = entry.spec if entry.spec is not None else existing.get(entry.name)
        port = spec.port if spec is not None else AgentEnvSpec().port
        urls[entry.name] = agent_env_url(namespace, entry.name, port)
    return urls
