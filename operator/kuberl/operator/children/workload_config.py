"""The job's ConfigMap: the rendered WorkloadConfig every process of the job reads. Pure."""

from __future__ import annotations

from typing import Any

from kuberl.operator.api import RLJob
from kuberl.operator.api.constants import LABEL_JOB
from kuberl.operator.children.common import CONFIG_KEY, common_labels, object_meta
from kuberl.operator.naming import config_map_name, engine_url
from kuberl.operator.settings import OperatorSettings
from kuberl.workloads.config import config_from_rljob


def job_config_map(
    job: RLJob,
    namespace: str,
    settings: OperatorSettings,
    *,
    pool_spec: dict[str, Any] | None = None,
    agent_env_urls: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The ConfigMap every process of the job mounts at /etc/kuberl (the rendered WorkloadConfig)."""
    name = job.metadata["name"]
    config = config_from_rljob(
        namespace,
        name,
        job.spec.to_wire(),
        uid=job.metadata.get("uid"),
        pool_spec=pool_spec,
        agent_env_urls=agent_env_urls,
    )
    if config.rollout.engine == "sglang" and not config.rollout.engine_url:
        # Every rollout pod runs its own server next to the agent: loopback is the same URL in all of them.
        config = config.model_copy(update={"rollout": config.rollout.model_copy(update={"engine_url": engine_url()})})
    labels = {**common_labels(name, "config", settings), LABEL_JOB: name}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(config_map_name(name), namespace, labels),
        "data": {CONFIG_KEY: config.dump()},
    }
