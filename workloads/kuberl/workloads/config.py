"""What a workload process (trainer, rollout agent, environment) needs to run: one file.

The operator renders a `WorkloadConfig` for a job into a ConfigMap mounted at
/etc/kuberl/config.yaml; `kuberl run` renders the same for local processes. A process
reads it with `load_config()` (path from KUBERL_CONFIG, falling back to the mount).
`config_from_rljob` is the pure mapping from an RLJob's spec (the wire dict, defaults
applied) to that runtime view: resolved endpoints, stream names, effective settings.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from kuberl.workloads.spec import (
    AlgorithmSpec,
    ApiModel,
    BufferSpec,
    CheckpointSpec,
    CurriculumSpec,
    Dataset,
    ModelSpec,
    Parallelism,
    RewardSpec,
    RunPolicy,
    WeightStoreSpec,
)

CONFIG_ENV = "KUBERL_CONFIG"
DEFAULT_CONFIG_PATH = "/etc/kuberl/config.yaml"
DEFAULT_OFF_POLICY_STEPS = 1


class JobRef(ApiModel):
    """Which RLJob this process belongs to."""

    namespace: str = Field(description="Namespace of the RLJob.")
    name: str = Field(description="Name of the RLJob.")
    uid: str | None = Field(None, description="UID of the RLJob, when run by the operator.")

    @property
    def slug(self) -> str:
        """`<namespace>_<name>` restricted to what NATS stream and bucket names allow."""
        return re.sub(r"[^A-Za-z0-9_-]", "_", f"{self.namespace}_{self.name}")


class RolloutRuntime(ApiModel):
    """How the rollout agent generates."""

    engine: Literal["sglang", "torch"] = Field("torch", description="Engine the agent drives.")
    engine_url: str | None = Field(None, description="SGLang server URL (sidecar) when engine is sglang.")
    concurrency: int = Field(8, ge=1, description="Prompt groups generated at the same time.")
    weight_swap: Literal["pause", "drain"] = Field("pause", description="What happens to in-flight requests on a new policy version.")
    abandon_stale_groups: bool = Field(True, description="Stop groups the trainer could no longer use and hand their prompts back.")


class WorkloadConfig(ApiModel):
    """The whole runtime configuration of one job's processes."""

    job: JobRef = Field(description="The job.")
    mode: Literal["colocated", "decoupled"] = Field(description="Synchronous (colocated) or asynchronous (decoupled).")
    max_off_policy_steps: int = Field(ge=0, description="Effective staleness bound: 0 in colocated mode.")
    model: ModelSpec = Field(description="Initial policy.")
    datasets: list[Dataset] = Field(description="Prompt datasets.")
    curriculum: CurriculumSpec | None = Field(None, description="Curriculum stages.")
    reward: RewardSpec = Field(description="Reward.")
    algorithm: AlgorithmSpec = Field(description="Algorithm settings.")
    trainer_backend: Literal["megatron", "torch"] = Field("torch", description="Policy backend of the trainer.")
    parallelism: Parallelism = Field(default_factory=Parallelism, description="Trainer model parallelism.")
    buffer: BufferSpec = Field(description="NATS JetStream buffer (url resolved).")
    weight_store: WeightStoreSpec = Field(description="S3 weight store (endpoint resolved).")
    checkpoint: CheckpointSpec = Field(description="Checkpointing (uri resolved).")
    run_policy: RunPolicy = Field(description="Steps and limits.")
    rollout: RolloutRuntime = Field(default_factory=RolloutRuntime, description="Rollout agent runtime.")
    agent_envs: dict[str, str] = Field(default_factory=dict, description="Agent environment name -> base URL.")
    output_dir: str = Field("/var/run/kuberl", description="Where metrics (JSONL), plots and local checkpoints go.")

    @property
    def weight_prefix(self) -> str:
        """Key prefix of this job's weight versions in the bucket."""
        return "/".join(p for p in (self.weight_store.prefix.strip("/"), self.job.namespace, self.job.name) if p)

    def dump(self) -> str:
        return yaml.safe_dump(self.to_wire(), sort_keys=False)


def config_from_rljob(
    namespace: str,
    name: str,
    spec: dict[str, Any],
    *,
    uid: str | None = None,
    pool_spec: dict[str, Any] | None = None,
    agent_env_urls: dict[str, str] | None = None,
    nats_url: str | None = None,
    s3_endpoint: str | None = None,
    output_dir: str | None = None,
) -> WorkloadConfig:
    """Map an RLJob spec (camelCase wire dict, defaults applied) to the processes' config.

    `pool_spec` is the RolloutPool spec the job generates with (its inline template or
    the referenced pool); endpoint arguments override what the spec says (kuberl run
    starts its own servers).
    """
    mode = spec.get("mode", "decoupled")
    off_policy = spec.get("maxOffPolicySteps")
    if off_policy is None:
        off_policy = 0 if mode == "colocated" else DEFAULT_OFF_POLICY_STEPS
    pool = pool_spec or (spec.get("rollout") or {}).get("template") or {}
    engine = (pool.get("engine") or {}).get("type", "torch" if spec.get("trainer", {}).get("backend") == "torch" else "sglang")
    agent = pool.get("agent") or {}
    buffer = dict(spec.get("buffer") or {})
    if nats_url:
        buffer["url"] = nats_url
    store = dict(spec["weightStore"])
    if s3_endpoint:
        store["endpoint"] = s3_endpoint
    checkpoint = dict(spec.get("checkpoint") or {})
    if not checkpoint.get("uri"):
        bucket, prefix = store["bucket"], store.get("prefix", "kuberl").strip("/")
        checkpoint["uri"] = f"s3://{bucket}/{prefix}/{namespace}/{name}/checkpoints"
    trainer = spec.get("trainer") or {}
    return WorkloadConfig(
        job=JobRef(namespace=namespace, name=name, uid=uid),
        mode=mode,
        max_off_policy_steps=off_policy,
        model=spec["model"],
        datasets=spec["datasets"],
        curriculum=spec.get("curriculum"),
        reward=spec.get("reward") or {},
        algorithm=spec.get("algorithm") or {},
        trainer_backend=trainer.get("backend", "megatron"),
        parallelism=trainer.get("parallelism") or {},
        buffer=buffer,
        weight_store=store,
        checkpoint=checkpoint,
        run_policy=spec.get("runPolicy") or {},
        rollout=RolloutRuntime(
            engine=engine,
            concurrency=agent.get("concurrency", 8),
            weight_swap=agent.get("weightSwap", "pause"),
            abandon_stale_groups=agent.get("abandonStaleGroups", True),
        ),
        agent_envs=dict(agent_env_urls or {}),
        **({"output_dir": output_dir} if output_dir else {}),
    )


def load_config(path: str | os.PathLike[str] | None = None) -> WorkloadConfig:
    """Read the config a process was started with, failing with the path in the message."""
    where = Path(path or os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_PATH))
    try:
        data = yaml.safe_load(where.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"kuberl workload config not found at {where}; set {CONFIG_ENV} or mount it there") from None
    return WorkloadConfig.model_validate(data)
