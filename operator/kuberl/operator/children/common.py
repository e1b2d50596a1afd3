"""Pieces every child manifest shares: labels, resources, placement, env, volumes. Pure."""

from __future__ import annotations

from typing import Any

from kuberl.operator.api.common import Placement, ResourceRequirements
from kuberl.operator.api.constants import (
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    PAUSED_ANNOTATION,
)
from kuberl.operator.naming import config_map_name
from kuberl.operator.settings import OperatorSettings
from kuberl.workloads.config import DEFAULT_CONFIG_PATH

# The emptyDir both containers of an SGLang rollout pod mount: the agent writes fetched
# weight versions there and the server loads them (/update_weights_from_disk).
ENGINE_SCRATCH_DIR = "/var/run/kuberl/engine"
ENGINE_SCRATCH_ENV = "KUBERL_ENGINE_SCRATCH"
ENGINE_SCRATCH_VOLUME = "engine-scratch"
# Where a builtin:// model's initial weights are written (by an init container) for the server.
ENGINE_INITIAL_MODEL_DIR = f"{ENGINE_SCRATCH_DIR}/initial"
# SGLang on CPU imports two sgl_kernel ops; kuberl's pure-torch stand-in sits here in the CPU engine image.
SGLANG_CPU_KERNELS_DIR = "/opt/kuberl/sglang_cpu"
SGLANG_CPU_FLAGS = ("--device", "cpu", "--attention-backend", "torch_native", "--sampling-backend", "pytorch")
CONFIG_MOUNT_DIR = DEFAULT_CONFIG_PATH.rsplit("/", 1)[0]
CONFIG_KEY = DEFAULT_CONFIG_PATH.rsplit("/", 1)[1]
GPU_RESOURCE = "nvidia.com/gpu"
NON_ROOT_UID = 65532  # the conventional "nonroot" user of distroless images


def common_labels(instance: str, component: str, settings: OperatorSettings) -> dict[str, str]:
    return {
        LABEL_NAME: "kuberl",
        LABEL_INSTANCE: instance,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: "kuberl",
        LABEL_MANAGED_BY: "kuberl-operator",
        **settings.extra_labels,
    }


def _quantity(value: int | str) -> str:
    return str(value)


def container_resources(resources: ResourceRequirements | None, gpus: int) -> dict[str, Any]:
    """Resources of a container; GPUs go to limits (extended resources need them) and requests."""
    out: dict[str, dict[str, str]] = {}
    if resources is not None:
        if resources.requests:
            out["requests"] = {k: _quantity(v) for k, v in resources.requests.items()}
        if resources.limits:
            out["limits"] = {k: _quantity(v) for k, v in resources.limits.items()}
    if gpus > 0:
        out.setdefault("limits", {})[GPU_RESOURCE] = str(gpus)
        out.setdefault("requests", {})[GPU_RESOURCE] = str(gpus)
    return out


def apply_placement(pod_spec: dict[str, Any], placement: Placement | None, scheduler_name: str | None = None) -> None:
    if placement is not None:
        if placement.node_selector:
            pod_spec["nodeSelector"] = dict(placement.node_selector)
        if placement.tolerations:
            pod_spec["tolerations"] = [t.to_wire() for t in placement.tolerations]
        if placement.affinity:
            pod_spec["affinity"] = dict(placement.affinity)
        if placement.priority_class_name:
            pod_spec["priorityClassName"] = placement.priority_class_name
    if scheduler_name:
        pod_spec["schedulerName"] = scheduler_name


def env_list(pairs: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": k, "value": str(v)} for k, v in pairs.items()]


def downward_env() -> list[dict[str, Any]]:
    """The pod's own name (the downward API): a rollout agent's identity in its trajectories."""
    return [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]


def user_env(env) -> list[dict[str, Any]]:
    return [e.to_wire() for e in env or []]


def config_volume(job: str, optional: bool = False) -> dict[str, Any]:
    source: dict[str, Any] = {"name": config_map_name(job)}
    if optional:
        source["optional"] = True
    return {"name": "kuberl-config", "configMap": source}


CONFIG_VOLUME_MOUNT = {"name": "kuberl-config", "mountPath": CONFIG_MOUNT_DIR, "readOnly": True}


def object_meta(name: str, namespace: str, labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return meta


def deployment_manifest(name: str, namespace: str, labels: dict[str, str], selector: dict[str, str], replicas: int,
                pod_spec: dict[str, Any]) -> dict[str, Any]:
    """An apps/v1 Deployment of `replicas` pods labelled `labels`, selected by `selector`."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(name, namespace, labels),
        "spec": {"replicas": replicas, "selector": {"matchLabels": selector},
                 "template": {"metadata": {"labels": labels}, "spec": pod_spec}},
    }


def is_paused(metadata: dict[str, Any]) -> bool:
    return (metadata.get("annotations") or {}).get(PAUSED_ANNOTATION) == "true"
