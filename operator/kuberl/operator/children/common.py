"""Pieces every child manifest shares: labels, resources, placement, env, volumes,
the restricted security context. Pure."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from kuberl.operator.api.common import Placement, ResourceRequirements
from kuberl.operator.api.constants import (
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    MANAGED_BY_LABEL_VALUE,
    PAUSED_ANNOTATION,
)
from kuberl.operator.naming import config_map_name
from kuberl.operator.settings import OperatorSettings
from kuberl.workloads.config import (
    DEFAULT_CONFIG_PATH,
    NATS_CREDENTIALS_DIR_ENV,
    NATS_CREDENTIALS_MOUNT,
    S3_CREDENTIAL_KEYS,
    S3_OPTIONAL_CREDENTIAL_KEYS,
)

# The emptyDir both containers of an SGLang rollout pod mount: the agent writes fetched
# weight versions there and the server loads them (/update_weights_from_disk).
ENGINE_SCRATCH_DIR = "/var/run/kuberl/engine"
ENGINE_SCRATCH_ENV = "KUBERL_ENGINE_SCRATCH"
ENGINE_SCRATCH_VOLUME = "engine-scratch"
# Where a builtin:// model's initial weights are written (by an init container) for the server.
ENGINE_INITIAL_MODEL_DIR = f"{ENGINE_SCRATCH_DIR}/initial"
# SGLang on CPU imports two sgl_kernel ops; kuberl's pure-torch stand-in sits here in the CPU engine image.
SGLANG_CPU_KERNELS_DIR = "/opt/kuberl/sglang_cpu"
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
        **settings.extra_labels,
        # Last: the operator's watches keep only objects carrying it (controllers.watched).
        LABEL_MANAGED_BY: MANAGED_BY_LABEL_VALUE,
    }


def _quantity(value: int | str) -> str:
    return str(value)


# -- resources -------------------------------------------------------------------------

# What a container gets for the cpu/memory its spec leaves unset (key by key: a value the
# user gave always wins), so every pod is schedulable by what it really needs and a leak
# is bounded by a memory limit instead of the node's OOM killer picking a neighbour.
# Requests stay modest (what the smallest sensible node of that role has free), the
# memory limit leaves headroom. GPU containers scale per GPU: host memory (pinned
# buffers, weight loading and checkpointing, dataloaders) and CPU (one NCCL proxy and
# dataloader per rank) grow with the GPUs. Values: (cpu request, memory request, memory limit).
#   trainer, engine, torch agent on GPU: 2 CPU, 16Gi, limit 32Gi per GPU (an 8-GPU trainer:
#     16 CPU, 128Gi, limit 256Gi: a fraction of an 8-GPU node's 1-2 TiB and ~100 cores);
#   trainer, SGLang engine, torch agent on CPU: 1 CPU, 2Gi, limit 8Gi (the tiny models);
#   agent beside an SGLang engine: 500m, 1Gi, limit 4Gi (HTTP client; weights go through files);
#   initial-model init container: 500m, 1Gi, limit 2Gi (writes a builtin:// model once);
#   AgentEnv server: 250m, 256Mi, limit 1Gi (the reference server is asyncio HTTP).
ROLE_TRAINER_DEFAULTS = "trainer"
ROLE_ENGINE_DEFAULTS = "engine"
ROLE_AGENT_DEFAULTS = "agent"
ROLE_TORCH_AGENT_DEFAULTS = "torch-agent"
ROLE_INIT_DEFAULTS = "init"
ROLE_ENV_DEFAULTS = "env"
_PER_GPU = ("2", "16Gi", "32Gi")
_CPU_MODEL = ("1", "2Gi", "8Gi")
DEFAULT_RESOURCES: dict[str, dict[bool, tuple[str, str, str]]] = {
    # role -> {on GPU?: (cpu request, memory request, memory limit)}; GPU values are per GPU.
    ROLE_TRAINER_DEFAULTS: {True: _PER_GPU, False: _CPU_MODEL},
    ROLE_ENGINE_DEFAULTS: {True: _PER_GPU, False: _CPU_MODEL},
    ROLE_TORCH_AGENT_DEFAULTS: {True: _PER_GPU, False: _CPU_MODEL},
    ROLE_AGENT_DEFAULTS: {True: ("500m", "1Gi", "4Gi"), False: ("500m", "1Gi", "4Gi")},
    ROLE_INIT_DEFAULTS: {True: ("500m", "1Gi", "2Gi"), False: ("500m", "1Gi", "2Gi")},
    ROLE_ENV_DEFAULTS: {True: ("250m", "256Mi", "1Gi"), False: ("250m", "256Mi", "1Gi")},
}

_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$"
)
_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "n": Decimal("1e-9"),
           "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
           "E": 10**18}


def quantity_value(q: int | str) -> Decimal | None:
    """A Kubernetes quantity as a number (bytes, cores); None when it does not parse (the
    API server then refuses the pod with its own message; the builders just compare nothing)."""
    m = _QUANTITY.match(str(q).strip())
    if not m:
        return None
    try:
        number = Decimal(m.group(1))
        if m.group(2):
            return number * Decimal("1" + m.group(2))
        return number * Decimal(_SUFFIX.get(m.group(3) or "", 1))
    except InvalidOperation:
        return None


def _scaled(q: str, n: int) -> str:
    """``q`` (an integer with an optional suffix, as in DEFAULT_RESOURCES) times ``n``."""
    m = re.fullmatch(r"([0-9]+)(.*)", q)
    assert m, q
    return f"{int(m.group(1)) * n}{m.group(2)}"


def _smaller(a: str, b: str) -> str:
    va, vb = quantity_value(a), quantity_value(b)
    return b if va is not None and vb is not None and vb < va else a


def _larger(a: str, b: str) -> str:
    va, vb = quantity_value(a), quantity_value(b)
    return b if va is not None and vb is not None and vb > va else a


def container_resources(resources: ResourceRequirements | None, gpus: int, role: str | None = None) -> dict[str, Any]:
    """Resources of a container; GPUs go to limits (extended resources need them) and requests.

    With ``role`` (a DEFAULT_RESOURCES key), cpu and memory requests and the memory limit
    the user left unset get that role's defaults, key by key. A default never contradicts
    what was given: a default request is lowered to a given limit, a default limit raised
    to a given request (the API server refuses request > limit)."""
    out: dict[str, dict[str, str]] = {}
    if resources is not None:
        if resources.requests:
            out["requests"] = {k: _quantity(v) for k, v in resources.requests.items()}
        if resources.limits:
            out["limits"] = {k: _quantity(v) for k, v in resources.limits.items()}
    if role is not None:
        cpu, memory, memory_limit = DEFAULT_RESOURCES[role][gpus > 0]
        if gpus > 0:
            cpu, memory, memory_limit = (_scaled(q, gpus) for q in (cpu, memory, memory_limit))
        requests, limits = out.setdefault("requests", {}), out.setdefault("limits", {})
        # A limit without a request: Kubernetes would default the request to the limit;
        # ours is lower, which is what a modest default is for, but never above the limit.
        if "cpu" not in requests:
            requests["cpu"] = _smaller(cpu, limits["cpu"]) if "cpu" in limits else cpu
        if "memory" not in requests:
            requests["memory"] = _smaller(memory, limits["memory"]) if "memory" in limits else memory
        if "memory" not in limits:
            limits["memory"] = _larger(memory_limit, requests["memory"])
    if gpus > 0:
        out.setdefault("limits", {})[GPU_RESOURCE] = str(gpus)
        out.setdefault("requests", {})[GPU_RESOURCE] = str(gpus)
    return out


def shm_volume(resources: dict[str, Any]) -> dict[str, Any]:
    """The /dev/shm emptyDir (medium Memory) of a container with these resources.

    NCCL, torch dataloaders and SGLang's tensor-parallel workers use shared memory, and
    the runtime's 64 MiB default is too small. Memory-backed, what is written there counts
    against the container's memory limit: the sizeLimit is half of it, so shared memory
    cannot starve the process itself (1Gi when the limit does not parse)."""
    limit = quantity_value(((resources.get("limits") or {}).get("memory")) or "")
    mib = int(limit / 2 / 2**20) if limit else 1024
    size = f"{mib // 1024}Gi" if mib and mib % 1024 == 0 else f"{max(mib, 1)}Mi"
    return {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": size}}


def shm_mount() -> dict[str, Any]:
    return {"name": "dshm", "mountPath": "/dev/shm"}


HUB_CACHE_VOLUME = "hf-hub-cache"
HUB_CACHE_DIR = "/var/cache/huggingface/hub"


def mount_hub_cache(pod_spec: dict[str, Any], hub_cache) -> None:
    """Give every container of ``pod_spec`` the job's Hugging Face hub cache (``model.hubCache``),
    read-only, where hf:// sources resolve (HF_HUB_CACHE; offline: pods have no hub to ask)."""
    if hub_cache is None:
        return
    pod_spec["volumes"].append({"name": HUB_CACHE_VOLUME,
                                "persistentVolumeClaim": {"claimName": hub_cache.claim_name, "readOnly": True}})
    mount = {"name": HUB_CACHE_VOLUME, "mountPath": HUB_CACHE_DIR, "readOnly": True,
             **({"subPath": hub_cache.sub_path} if hub_cache.sub_path else {})}
    for container in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
        container.setdefault("volumeMounts", []).append(dict(mount))
        container.setdefault("env", []).extend([{"name": "HF_HUB_CACHE", "value": HUB_CACHE_DIR},
                                                {"name": "HF_HUB_OFFLINE", "value": "1"}])


# -- security ----------------------------------------------------------------------------

# Every process writes only here (the root filesystem is read-only): temporary files,
# and HOME with its caches (torch inductor, triton, Hugging Face downloads, SGLang's and
# flashinfer's JIT caches all live under $HOME/.cache or /tmp).
TMP_VOLUME = "tmp"
WRITABLE_HOME = "/tmp"
WRITABLE_ENV = {"HOME": WRITABLE_HOME, "XDG_CACHE_HOME": f"{WRITABLE_HOME}/.cache"}


def tmp_mount() -> dict[str, Any]:
    return {"name": TMP_VOLUME, "mountPath": "/tmp"}


def tmp_volume(size_limit: str | None = None) -> dict[str, Any]:
    """Disk-backed /tmp. No size limit by default: it holds model downloads and weight
    versions (tens of GiB for a 7B model); the node's ephemeral storage bounds it."""
    return {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": size_limit} if size_limit else {}}


def restricted_container_security(read_only_root_filesystem: bool = True) -> dict[str, Any]:
    """A container securityContext meeting the restricted Pod Security Standard (no
    privilege escalation, no capabilities), with a read-only root filesystem (writable
    emptyDirs are mounted where the process writes)."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": read_only_root_filesystem,
        "capabilities": {"drop": ["ALL"]},
    }


def restricted_pod_security(run_as_non_root: bool = True) -> dict[str, Any]:
    """The pod securityContext of the restricted Pod Security Standard: the runtime's
    seccomp profile and a non-root uid/gid. The uid is set, not just runAsNonRoot,
    because runAsNonRoot alone rejects images whose USER is root (the upstream SGLang and
    NGC images); fsGroup makes mounted Secrets (mode 0440) and emptyDirs readable to it."""
    security: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if run_as_non_root:
        security.update({"runAsNonRoot": True, "runAsUser": NON_ROOT_UID, "runAsGroup": NON_ROOT_UID,
                         "fsGroup": NON_ROOT_UID})
    return security


def restrict_pod(pod_spec: dict[str, Any], run_as_non_root: bool = True) -> dict[str, Any]:
    """Set the pod-level hardening every workload pod gets: no workload calls the
    Kubernetes API (no token to steal; a serviceAccountName still brings a cloud identity,
    whose webhook projects its own token), and no Service environment variables (they leak
    the namespace's Services to model-written code and slow starts in big namespaces)."""
    pod_spec["securityContext"] = restricted_pod_security(run_as_non_root)
    pod_spec["automountServiceAccountToken"] = False
    pod_spec["enableServiceLinks"] = False
    return pod_spec


# -- credentials -------------------------------------------------------------------------

NATS_CREDENTIALS_VOLUME = "nats-credentials"


def credential_env(weight_store_secret: str | None) -> list[dict[str, Any]]:
    """The S3 keys from the weight store's Secret, as references (boto3 reads the
    AWS_* variables); the session token is optional (long-lived keys have none)."""
    if not weight_store_secret:
        return []
    env = [{"name": k,
            "valueFrom": {"secretKeyRef": {"name": weight_store_secret, "key": k}}} for k in S3_CREDENTIAL_KEYS]
    env += [{"name": k, "valueFrom": {"secretKeyRef": {"name": weight_store_secret, "key": k, "optional": True}}}
            for k in S3_OPTIONAL_CREDENTIAL_KEYS]
    return env


def nats_credentials(buffer_secret: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                         list[dict[str, Any]]]:
    """(env, volumeMounts, volumes) bringing the buffer's Secret to a container as files:
    a NATS creds file is a file, and files do not show in `kubectl describe` or /proc/<pid>/environ."""
    if not buffer_secret:
        return [], [], []
    env = [{"name": NATS_CREDENTIALS_DIR_ENV, "value": NATS_CREDENTIALS_MOUNT}]
    mounts = [{"name": NATS_CREDENTIALS_VOLUME, "mountPath": NATS_CREDENTIALS_MOUNT, "readOnly": True}]
    # 0440 with fsGroup: readable by the workload's group, not by other uids.
    volumes = [{"name": NATS_CREDENTIALS_VOLUME, "secret": {"secretName": buffer_secret, "defaultMode": 0o440}}]
    return env, mounts, volumes


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


def unless_user_set(entries: list[dict[str, Any]], user: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``entries`` without those the user's env names (theirs win; a duplicate name would
    make the API server warn)."""
    given = {e["name"] for e in user}
    return [e for e in entries if e["name"] not in given]


def writable_env(user: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """HOME and XDG_CACHE_HOME on the writable /tmp, unless the user's env sets them."""
    return unless_user_set(env_list(WRITABLE_ENV), user)


def config_volume(job: str, optional: bool = False) -> dict[str, Any]:
    source: dict[str, Any] = {"name": config_map_name(job)}
    if optional:
        source["optional"] = True
    return {"name": "kuberl-config", "configMap": source}


CONFIG_VOLUME_MOUNT = {"name": "kuberl-config", "mountPath": CONFIG_MOUNT_DIR, "readOnly": True}


def object_meta(name: str, namespace: str, labels: dict[str, str],
                annotations: dict[str, str] | None = None) -> dict[str, Any]:
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
