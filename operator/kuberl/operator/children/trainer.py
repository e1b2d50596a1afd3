"""The trainer gang: its pods and the headless rendezvous Service. Pure."""

from __future__ import annotations

from typing import Any

from kuberl.operator.api import RLJob
from kuberl.operator.api.constants import (
    KUEUE_POD_GROUP_COUNT,
    KUEUE_POD_GROUP_LABEL,
    KUEUE_QUEUE_LABEL,
    LABEL_GANG_GENERATION,
    LABEL_REPLICA_INDEX,
    POD_GROUP_SIZE_ANNOTATION,
    RENDEZVOUS_PORT,
    WORKLOAD_METRICS_PORT,
    ROLE_TRAINER,
)
from kuberl.operator.children.common import (
    CONFIG_VOLUME_MOUNT,
    ROLE_TRAINER_DEFAULTS,
    apply_placement,
    mount_hub_cache,
    common_labels,
    config_volume,
    container_resources,
    credential_env,
    env_list,
    nats_credentials,
    object_meta,
    restrict_pod,
    restricted_container_security,
    shm_mount,
    shm_volume,
    tmp_mount,
    tmp_volume,
    user_env,
    writable_env,
)
from kuberl.operator.decisions.job_shape import trainer_ranks
from kuberl.operator.naming import (
    trainer_pod_name,
    trainer_selector,
    trainer_service_name,
)
from kuberl.operator.settings import OperatorSettings
from kuberl.workloads.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, METRICS_PORT_ENV, WorkloadConfig
from kuberl.workloads.spec import WandbSpec


def trainer_service(job: RLJob, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """Headless Service giving each trainer pod a stable DNS name for torch.distributed rendezvous."""
    name = job.metadata["name"]
    labels = {**common_labels(name, ROLE_TRAINER, settings), **trainer_selector(name)}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(trainer_service_name(name), namespace, labels),
        "spec": {
            "clusterIP": "None",
            # Ranks must resolve each other before any is Ready (they become ready together).
            "publishNotReadyAddresses": True,
            "selector": trainer_selector(name),
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def wandb_env(wandb: WandbSpec | None) -> list[dict[str, Any]]:
    """The W&B key from its Secret (never a literal in the pod spec), and a self-hosted server's URL."""
    if wandb is None:
        return []
    env: list[dict[str, Any]] = []
    if wandb.api_key_secret is not None:
        ref = wandb.api_key_secret
        env.append({"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if wandb.base_url:
        env.append({"name": "WANDB_BASE_URL", "value": wandb.base_url})
    return env


# The trainer writes metrics, plots and local checkpoints here (WorkloadConfig.output_dir's
# default: the operator's config leaves it unset); writable with a read-only root filesystem.
TRAINER_OUTPUT_DIR = WorkloadConfig.model_fields["output_dir"].default
TRAINER_OUTPUT_VOLUME = "output"


def trainer_image(job: RLJob, settings: OperatorSettings) -> str:
    """The job's own image, else the installation's for what the trainer pod runs: SGLang
    beside the trainer (colocatedEngine sglang), megatron-core, or the CPU workload image."""
    trainer = job.spec.trainer
    if trainer.image:
        return trainer.image
    if job.spec.mode == "colocated" and trainer.colocated_engine == "sglang":
        return settings.colocated_image
    return settings.trainer_image if trainer.backend == "megatron" else settings.workload_image


def trainer_pod(job: RLJob, namespace: str, index: int, generation: int, settings: OperatorSettings) -> dict[str, Any]:
    """Rank `index` of the trainer gang; `generation` (= restarts so far) tells gangs apart."""
    name = job.metadata["name"]
    spec = job.spec
    trainer = spec.trainer
    pod_name = trainer_pod_name(name, index)
    service = trainer_service_name(name)
    nproc, world = trainer_ranks(job)
    labels = {
        **common_labels(name, ROLE_TRAINER, settings),
        **trainer_selector(name),
        LABEL_REPLICA_INDEX: str(index),
        LABEL_GANG_GENERATION: str(generation),
    }
    annotations: dict[str, str] = {}
    scheduling = spec.scheduling
    group = f"{name}-trainer-g{generation}"
    if scheduling.pod_group.enabled:
        labels[scheduling.pod_group.label_key] = group
        annotations[POD_GROUP_SIZE_ANNOTATION] = str(trainer.replicas)
    if scheduling.queue_name:
        # Kueue's plain-pod integration admits the gang as one workload: the group name
        # label plus the total count annotation make it all-or-nothing.
        labels[KUEUE_QUEUE_LABEL] = scheduling.queue_name
        labels[KUEUE_POD_GROUP_LABEL] = group
        annotations[KUEUE_POD_GROUP_COUNT] = str(trainer.replicas)
    env = env_list(
        {
            CONFIG_ENV: DEFAULT_CONFIG_PATH,
            # The torch.distributed env:// rendezvous of the gang (what torchrun and
            # init_process_group read). The tiny torch trainer is one rank and does not
            # read them; the megatron backend does (issue 13).
            "MASTER_ADDR": f"{trainer_pod_name(name, 0)}.{service}.{namespace}.svc",
            "MASTER_PORT": str(RENDEZVOUS_PORT),
            "NNODES": str(trainer.replicas),
            "NODE_RANK": str(index),
            "NPROC_PER_NODE": str(nproc),
            "WORLD_SIZE": str(world),
            METRICS_PORT_ENV: str(WORKLOAD_METRICS_PORT),
        }
    ) + wandb_env(spec.observability.wandb)
    buffer_secret = spec.buffer.credentials_secret.name if spec.buffer.credentials_secret else None
    store_secret = spec.weight_store.credentials_secret.name if spec.weight_store.credentials_secret else None
    nats_env, nats_mounts, nats_volumes = nats_credentials(buffer_secret)
    users = user_env(trainer.env)
    image = trainer_image(job, settings)
    resources = container_resources(trainer.resources, trainer.gpus_per_replica, ROLE_TRAINER_DEFAULTS)
    container = {
        "name": ROLE_TRAINER,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "kuberl.workloads.trainer"],
        "env": env + nats_env + credential_env(store_secret) + writable_env(users) + users,
        "ports": [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT},
                  {"name": "metrics", "containerPort": WORKLOAD_METRICS_PORT}],
        "resources": resources,
        "securityContext": restricted_container_security(),
        "volumeMounts": [CONFIG_VOLUME_MOUNT, shm_mount(), tmp_mount(),
                         {"name": TRAINER_OUTPUT_VOLUME, "mountPath": TRAINER_OUTPUT_DIR}, *nats_mounts],
    }
    pod_spec: dict[str, Any] = {
        "hostname": pod_name,
        "subdomain": service,
        # A failed rank fails the gang: the operator restarts all ranks together.
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            config_volume(name),
            shm_volume(resources),
            tmp_volume(),
            {"name": TRAINER_OUTPUT_VOLUME, "emptyDir": {}},
            *nats_volumes,
        ],
    }
    mount_hub_cache(pod_spec, spec.model.hub_cache)
    if settings.workload_service_account:
        pod_spec["serviceAccountName"] = settings.workload_service_account
    restrict_pod(pod_spec)
    apply_placement(pod_spec, trainer.placement, scheduling.scheduler_name)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": object_meta(pod_name, namespace, labels, annotations),
            "spec": pod_spec}

