"""What a workload process (trainer, rollout agent, environment) needs to run: one file.

The operator renders a `WorkloadConfig` for a job into a ConfigMap mounted at
/etc/kuberl/config.yaml; `kuberl run` renders the same for local processes; both with the
one function `kuberl.operator.children.workload_config.workload_config`, from the typed
RLJob. A process reads it with `load_config()` (path from KUBERL_CONFIG, falling back to
the mount). The fields here carry no defaults of their own: every value comes from the
API models, so what the manifest says (or defaults to) is what runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from kuberl.workloads.spec import (
    AlgorithmSpec,
    ApiModel,
    BufferSpec,
    CheckpointSpec,
    CurriculumSpec,
    Dataset,
    EvaluationSpec,
    ModelSpec,
    ObservabilitySpec,
    Parallelism,
    RewardSpec,
    RunPolicy,
    WeightStoreSpec,
)

CONFIG_ENV = "KUBERL_CONFIG"
# The Prometheus endpoint of trainer and rollout processes (observe.serve): the operator sets
# the port it declares on the pod; `kuberl run` a free loopback port per process.
METRICS_PORT_ENV = "KUBERL_METRICS_PORT"
ENGINE_URL_ENV = "KUBERL_ENGINE_URL"  # a rollout agent's own SGLang server (`kuberl run`); overrides rollout.engine_url
METRICS_ADDR_ENV = "KUBERL_METRICS_ADDR"
# Where a rollout agent serves its weight versions to the other agents of its node
# (rollout.node_share): the node's name and the pod's address from the downward API, the
# port the operator declares. A local process uses this host's name, loopback, a free port.
NODE_NAME_ENV = "NODE_NAME"
POD_IP_ENV = "POD_IP"
WEIGHT_RELAY_PORT_ENV = "KUBERL_WEIGHT_RELAY_PORT"
DEFAULT_CONFIG_PATH = "/etc/kuberl/config.yaml"
# Credentials reach pods from Secrets only (never the ConfigMap): the job's
# spec.buffer.credentialsSecret is mounted at NATS_CREDENTIALS_MOUNT (keys: `creds`, a NATS
# credentials file; or `user` + `password`; or `token`) and its path given in
# NATS_CREDENTIALS_DIR_ENV; spec.weightStore.credentialsSecret's AWS_* keys become the
# environment variables of the same names (boto3 reads them).
NATS_CREDENTIALS_DIR_ENV = "KUBERL_NATS_CREDENTIALS_DIR"
NATS_CREDENTIALS_MOUNT = "/var/run/secrets/kuberl/nats"
S3_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_CREDENTIAL_KEYS = ("AWS_SESSION_TOKEN",)


class JobRef(ApiModel):
    """Which RLJob this process belongs to."""

    namespace: str = Field(description="Namespace of the RLJob.")
    name: str = Field(description="Name of the RLJob.")
    uid: str | None = Field(None, description="UID of the RLJob, when run by the operator.")


class RolloutRuntime(ApiModel):
    """How the rollout agent generates."""

    engine: Literal["sglang", "torch"] = Field(description="Engine the agent drives.")
    engine_url: str | None = Field(None, description="SGLang server URL (sidecar) when engine is sglang.")
    concurrency: int = Field(ge=1, description="Prompt groups generated at the same time.")
    weight_swap: Literal["pause",
                         "drain"] = Field(description="What happens to in-flight requests on a new policy version.")
    abandon_stale_groups: bool = Field(description="Stop groups the trainer could no longer "
                                                   "use and hand their prompts back.")
    weight_fetch: Literal["perNode", "perAgent"] = Field(
        "perNode",
        description="perNode: one agent of a node downloads each version and "
                    "the node's others copy it from that agent.",
    )


class WorkloadConfig(ApiModel):
    """The whole runtime configuration of one job's processes."""

    job: JobRef = Field(description="The job.")
    mode: Literal["colocated", "decoupled"] = Field(description="Synchronous (colocated) or asynchronous (decoupled).")
    max_off_policy_steps: int = Field(ge=0, description="Effective staleness bound: 0 in colocated mode.")
    model: ModelSpec = Field(description="Initial policy.")
    datasets: list[Dataset] = Field(description="Prompt datasets.")
    curriculum: CurriculumSpec | None = Field(None, description="Curriculum stages.")
    evaluation: EvaluationSpec | None = Field(None, description="Held-out evaluation.")
    reward: RewardSpec = Field(description="Reward.")
    algorithm: AlgorithmSpec = Field(description="Algorithm settings.")
    trainer_backend: Literal["megatron", "torch"] = Field(description="Policy backend of the trainer.")
    parallelism: Parallelism = Field(description="Trainer model parallelism.")
    buffer: BufferSpec = Field(description="NATS JetStream buffer (url resolved).")
    weight_store: WeightStoreSpec = Field(description="S3 weight store (endpoint resolved).")
    checkpoint: CheckpointSpec = Field(description="Checkpointing (uri resolved).")
    run_policy: RunPolicy = Field(description="Steps and limits.")
    rollout: RolloutRuntime = Field(description="Rollout agent runtime (colocated: the trainer's own engine).")
    agent_envs: dict[str, str] = Field(default_factory=dict, description="Agent environment name -> base URL.")
    agent_env_episode_timeouts: dict[str, int] = Field(default_factory=dict,
                                                       description="Agent environment name -> its "
                                                                   "episodeTimeoutSeconds (how long "
                                                                   "agents wait for an answer).")
    observability: ObservabilitySpec = Field(default_factory=ObservabilitySpec, description="Run loggers.")
    run_files_uri: str | None = Field(None,
                                      description="Where the trainer copies its run files (tensorboard/, wandb/): "
                                                  "<checkpoint uri>/run in a cluster; none under kuberl run, where "
                                                  "they stay in the output directory.")
    output_dir: str = Field("/var/run/kuberl", description="Where metrics (JSONL), plots and local checkpoints go.")

    @property
    def weight_prefix(self) -> str:
        """Key prefix of this job's weight versions in the bucket."""
        return "/".join(p for p in (self.weight_store.prefix.strip("/"), self.job.namespace, self.job.name) if p)

    def dump(self) -> str:
        return yaml.safe_dump(self.to_wire(), sort_keys=False)


def load_config(path: str | os.PathLike[str] | None = None) -> WorkloadConfig:
    """Read the config a process was started with, failing with the path in the message."""
    where = Path(path or os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_PATH))
    try:
        data = yaml.safe_load(where.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"kuberl workload config not found at {where}; set {CONFIG_ENV} or mount it there"
        ) from None
    return WorkloadConfig.model_validate(data)
