"""An AgentEnv's children: the locked-down Deployment, its Service and NetworkPolicies. Pure."""

from __future__ import annotations

from typing import Any

from kuberl.operator.api import AgentEnv, RLJob
from kuberl.operator.api.agentenv import AgentEnvSpec, LatencySpec
from kuberl.operator.api.constants import (
    API_VERSION,
    LABEL_JOB,
    LABEL_PART_OF,
    LABEL_ROLE,
    ROLE_AGENTENV,
    ROLE_ROLLOUT,
    ROLE_TRAINER,
)
from kuberl.operator.children.common import (
    ROLE_ENV_DEFAULTS,
    apply_placement,
    common_labels,
    container_resources,
    deployment_manifest,
    is_paused,
    object_meta,
    restrict_pod,
    restricted_container_security,
    tmp_mount,
    tmp_volume,
    user_env,
    writable_env,
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
        out.append({"apiVersion": API_VERSION, "kind": "AgentEnv",
                    "metadata": object_meta(entry.name, namespace, labels), "spec": entry.spec.to_wire()})
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
        "--latency", latency.distribution, "--latency-median", str(latency.median_seconds), "--latency-tail",
        str(latency.tail),
    ]


def agent_env_deployment(env: AgentEnv, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """Environment pods, locked down: agents run model-written code in them."""
    name = env.metadata["name"]
    spec = env.spec
    sandbox = spec.sandbox
    selector = env_selector(name)
    labels = {**common_labels(name, ROLE_AGENTENV, settings), **selector}
    replicas = 0 if is_paused(env.metadata) else spec.replicas
    users = user_env(spec.env)
    # The pod's own IP: the server answers a reset with the address of the replica that
    # holds the episode, so a client's later steps reach it past the Service's balancing.
    pod_ip = [] if "POD_IP" in {e["name"] for e in users} else [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    container: dict[str, Any] = {
        "name": "env",
        "image": spec.image or settings.workload_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(spec.command) if spec.command else list(REFERENCE_SERVER),
        "env": pod_ip + writable_env(users) + users,
        "ports": [{"name": "http", "containerPort": spec.port}],
        "resources": container_resources(spec.resources, 0, ROLE_ENV_DEFAULTS),
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": spec.port}, "periodSeconds": 5},
        # spec.sandbox decides (it may relax what the trainer and rollout pods always get).
        "securityContext": restricted_container_security(sandbox.read_only_root_filesystem),
    }
    args = agent_env_server_args(spec) + list(spec.args or [])
    if args:
        container["args"] = args
    pod_spec: dict[str, Any] = {"containers": [container]}
    # Environment code never needs the Kubernetes API; restrict_pod hands it no token.
    restrict_pod(pod_spec, run_as_non_root=sandbox.run_as_non_root)
    if sandbox.read_only_root_filesystem:
        # Bounded: model-written code runs here and must not fill the node's disk.
        container["volumeMounts"] = [tmp_mount()]
        pod_spec["volumes"] = [tmp_volume("1Gi")]
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


def deny_egress_policy_name(env: str) -> str:
    return f"{env}-deny-egress"


def agent_env_network_policy(env: AgentEnv, namespace: str, settings: OperatorSettings) -> dict[str, Any] | None:
    """Deny all egress from the environment pods (no exfiltration, no downloads); None when not asked."""
    if not env.spec.sandbox.deny_egress:
        return None
    name = env.metadata["name"]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(deny_egress_policy_name(name), namespace,
                                {**common_labels(name, ROLE_AGENTENV, settings), **env_selector(name)}),
        "spec": {"podSelector": {"matchLabels": env_selector(name)}, "policyTypes": ["Egress"], "egress": []},
    }


def agent_env_ingress_policy_name(env: str) -> str:
    return f"{env}-ingress"


def agent_env_ingress_policy(env: AgentEnv, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """Admit only kuberl's rollout and trainer pods (the trainer generates in colocated
    mode and runs evaluation episodes) to the environment's port, nothing else in the cluster.

    An AgentEnv a job declared inline carries the job's label: only that job's pods are
    its clients. A standalone one may serve any job in its namespace: kuberl's rollout and
    trainer pods there. (The kubelet's readiness probe comes from the node and is not
    subject to it on the common CNIs.)"""
    name = env.metadata["name"]
    job = (env.metadata.get("labels") or {}).get(LABEL_JOB)
    peer: dict[str, Any] = {"matchLabels": {LABEL_JOB: job} if job else {LABEL_PART_OF: "kuberl"},
                            "matchExpressions": [{"key": LABEL_ROLE, "operator": "In",
                                                  "values": [ROLE_ROLLOUT, ROLE_TRAINER]}]}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(agent_env_ingress_policy_name(name), namespace,
                                {**common_labels(name, ROLE_AGENTENV, settings), **env_selector(name)}),
        "spec": {
            "podSelector": {"matchLabels": env_selector(name)},
            "policyTypes": ["Ingress"],
            # A podSelector without namespaceSelector: pods in the policy's own namespace only.
            "ingress": [{"from": [{"podSelector": peer}], "ports": [{"protocol": "TCP", "port": env.spec.port}]}],
        },
    }


def agent_env_urls(job: RLJob, namespace: str, existing: dict[str, AgentEnvSpec | None]) -> dict[str, str]:
    """Where each of the job's agent environments answers: its Service, on the port of its
    inline spec or of the existing AgentEnv it names (``existing``, as read)."""
    urls = {}
    for entry in job.spec.agent_envs or []:
        spec = entry.spec if entry.spec is not None else existing.get(entry.name)
        port = spec.port if spec is not None else AgentEnvSpec().port
        urls[entry.name] = agent_env_url(namespace, entry.name, port)
    return urls
