"""The one RLJob -> WorkloadConfig function, and the job's ConfigMap that carries it. Pure.

Every process of a job (trainer, rollout agents) reads its settings from the
`WorkloadConfig` rendered here: in a cluster from the ConfigMap the operator mounts, under
`kuberl run` from the file the runner writes, both made by `workload_config`. It reads
the typed RLJob, so every default is the API model's own.
"""

from __future__ import annotations

import functools
from typing import Any

from kuberl.operator.api import RLJob
from kuberl.operator.api.agentenv import AgentEnvSpec
from kuberl.operator.api.constants import LABEL_JOB
from kuberl.operator.api.rolloutpool import RolloutPoolSpec
from kuberl.operator.children.agentenv import agent_env_urls
from kuberl.operator.children.common import CONFIG_KEY, common_labels, object_meta
from kuberl.operator.decisions.job_shape import generating_pool
from kuberl.operator.naming import config_map_name, engine_url
from kuberl.operator.settings import OperatorSettings
from kuberl.workloads.config import JobRef, RolloutRuntime, WorkloadConfig


def workload_config(
    job: RLJob,
    *,
    pool: RolloutPoolSpec | None,
    agent_env_urls: dict[str, str],
    nats_url: str | None = None,
    s3_endpoint: str | None = None,
    engine_url_override: str | None = None,
    output_dir: str | None = None,
    referenced_envs: dict[str, AgentEnvSpec | None] | None = None,
) -> WorkloadConfig:
    """What every process of ``job`` reads. ``pool`` is `generating_pool`'s answer;
    ``agent_env_urls`` where each of spec.agentEnvs answers. The endpoint arguments replace
    what the spec says (`kuberl run` starts its own servers)."""
    spec = job.spec
    namespace, name = job.metadata.get("namespace") or "default", job.metadata["name"]
    buffer = spec.buffer if not nats_url else spec.buffer.model_copy(update={"url": nats_url})
    store = spec.weight_store if not s3_endpoint else spec.weight_store.model_copy(update={"endpoint": s3_endpoint})
    checkpoint = spec.checkpoint.model_copy(update={"uri": spec.checkpoint_uri(namespace, name)})
    if pool is None:  # colocated: the trainer's own engine generates
        rollout = RolloutRuntime(engine=spec.trainer.colocated_engine, concurrency=1, weight_swap="pause",
                                 abandon_stale_groups=False)
    else:
        agent = pool.agent
        url = None
        if pool.engine.type == "sglang":
            # Every rollout pod runs its own server next to the agent: loopback is the same URL in all of them.
            url = engine_url_override or engine_url()
        rollout = RolloutRuntime(engine=pool.engine.type, engine_url=url, concurrency=agent.concurrency,
                                 weight_swap=agent.weight_swap, abandon_stale_groups=agent.abandon_stale_groups,
                                 weight_fetch=agent.weight_fetch)
    # Run files (TensorBoard, W&B offline) outlive a pod only on the store; a local run
    # already has them in its output directory.
    extra = {"output_dir": output_dir} if output_dir else {"run_files_uri": f"{checkpoint.uri.rstrip('/')}/run"}
    return WorkloadConfig(
        job=JobRef(namespace=namespace, name=name, uid=job.metadata.get("uid")),
        mode=spec.mode,
        max_off_policy_steps=spec.effective_max_off_policy_steps(),
        model=spec.model,
        datasets=spec.datasets,
        curriculum=spec.curriculum,
        evaluation=spec.evaluation,
        reward=spec.reward,
        algorithm=spec.algorithm,
        trainer_backend=spec.trainer.backend,
        parallelism=spec.trainer.parallelism,
        buffer=buffer,
        weight_store=store,
        checkpoint=checkpoint,
        run_policy=spec.run_policy,
        observability=spec.observability,
        rollout=rollout,
        agent_envs=dict(agent_env_urls),
        agent_env_episode_timeouts=episode_timeouts(job, referenced_envs or {}),
        **extra,
    )


def episode_timeouts(job: RLJob, existing: dict[str, AgentEnvSpec | None]) -> dict[str, int]:
    """How long an episode of each of the job's environments may run (its
    episodeTimeoutSeconds): the agents wait that long, plus a margin, for an answer."""
    out = {}
    for entry in job.spec.agent_envs or []:
        spec = entry.spec if entry.spec is not None else existing.get(entry.name)
        out[entry.name] = (spec or AgentEnvSpec()).episode_timeout_seconds
    return out


def job_workload_config(job: RLJob, *, referenced_pool: RolloutPoolSpec | None = None,
                        referenced_envs: dict[str, AgentEnvSpec | None] | None = None,
                        **endpoints: str) -> WorkloadConfig:
    """The config of a job in its cluster: its pool (``referenced_pool`` when it names one
    by poolRef) and its environments' Services (``referenced_envs``: the existing AgentEnvs
    it names, as read). ``endpoints``: `workload_config`'s overrides (tests run their own servers)."""
    namespace = job.metadata.get("namespace") or "default"
    return workload_config(job, pool=generating_pool(job, referenced_pool),
                           agent_env_urls=agent_env_urls(job, namespace, referenced_envs or {}),
                           referenced_envs=referenced_envs, **endpoints)


def job_config_map(job: RLJob, settings: OperatorSettings, config: WorkloadConfig) -> dict[str, Any]:
    """The ConfigMap every process of the job mounts at /etc/kuberl (the rendered WorkloadConfig)."""
    name = job.metadata["name"]
    labels = {**common_labels(name, "config", settings), LABEL_JOB: name}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(config_map_name(name), config.job.namespace, labels),
        "data": {CONFIG_KEY: _rendered(_SameContent(config))},
    }


class _SameContent:
    """A config that hashes and compares by its content (its JSON), so configs built anew
    each round from unchanged inputs share one rendering."""

    __slots__ = ("config", "key")

    def __init__(self, config: WorkloadConfig):
        self.config, self.key = config, config.model_dump_json()

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SameContent) and other.key == self.key


# Every job's status round asks for its ConfigMap; rendering YAML is the costly part
# (2 ms, against 0.01 ms for the JSON key), so each distinct config is rendered once.
# Room for every job of a large installation; an evicted one is only rendered again.
@functools.lru_cache(maxsize=2048)
def _rendered(content: _SameContent) -> str:
    return content.config.dump()
