"""Every name and selector derived from a parent object's name. Pure."""

from __future__ import annotations

from kuberl.operator.api import RLJob
from kuberl.operator.api.constants import (
    ENGINE_PORT,
    LABEL_ENV,
    LABEL_JOB,
    LABEL_POOL,
    LABEL_ROLE,
    ROLE_AGENTENV,
    ROLE_ROLLOUT,
    ROLE_TRAINER,
)


def config_map_name(job: str) -> str:
    return f"{job}-config"


def trainer_service_name(job: str) -> str:
    return f"{job}-trainer"


def trainer_pod_name(job: str, index: int) -> str:
    return f"{job}-trainer-{index}"


def inline_pool_name(job: str) -> str:
    return f"{job}-rollout"


def pool_name_for(job: RLJob) -> str | None:
    """The RolloutPool a job generates with; None in colocated mode."""
    name = job.metadata["name"]
    if job.spec.mode == "colocated":
        return None
    rollout = job.spec.rollout
    if rollout is not None and rollout.pool_ref:
        return rollout.pool_ref
    return inline_pool_name(name)


def pool_selector(pool: str) -> dict[str, str]:
    return {LABEL_ROLE: ROLE_ROLLOUT, LABEL_POOL: pool}


def env_selector(env: str) -> dict[str, str]:
    return {LABEL_ROLE: ROLE_AGENTENV, LABEL_ENV: env}


def trainer_selector(job: str) -> dict[str, str]:
    return {LABEL_JOB: job, LABEL_ROLE: ROLE_TRAINER}


def selector_string(labels: dict[str, str]) -> str:
    """The label selector in the string form the scale subresource and kubectl use."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def engine_url() -> str:
    """Where a rollout agent reaches its pod's SGLang server (same pod: loopback)."""
    return f"http://127.0.0.1:{ENGINE_PORT}"


def agent_env_url(namespace: str, env: str, port: int) -> str:
    return f"http://{env}.{namespace}.svc:{port}"
