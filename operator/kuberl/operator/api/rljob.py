"""RLJob: one reinforcement-learning post-training run."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from kuberl.operator.api.agentenv import AgentEnvSpec
from kuberl.operator.api.common import (
    LIST_MAX,
    NAME_MAX,
    SHORT_STRING_MAX,
    URI_MAX,
    ApiModel,
    Condition,
    EnvVar,
    Name,
    Placement,
    ResourceRequirements,
    cel,
    dns_label_rule,
    list_map,
)
from kuberl.operator.api.conditions import JOB_CONDITION_TYPES
from kuberl.operator.api.constants import API_VERSION
from kuberl.operator.api.rolloutpool import RolloutPoolSpec
from kuberl.workloads.spec import (
    AlgorithmSpec,
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
    VerifierReward,
    WeightStoreSpec,
)

DEFAULT_MAX_OFF_POLICY_STEPS = 1

# Pod names are "<job>-trainer-<index>"; they must stay valid DNS labels (63 chars).
JOB_NAME_MAX = 40


class TrainerSpec(ApiModel):
    """The trainer gang: one pod per replica, started and restarted together."""

    cel_rules: ClassVar = (
        cel(
            "(self.replicas * (self.gpusPerReplica > 0 ? self.gpusPerReplica : 1)) % (self.parallelism.tensor * "
            "self.parallelism.pipeline * self.parallelism.context) == 0",
            "tensor x pipeline x context parallel sizes must divide the "
            "number of trainer ranks (replicas x gpusPerReplica)",
            ".parallelism",
        ),
        cel("self.backend != 'torch' || self.replicas == 1",
            "the torch backend is single-replica; use backend megatron for more replicas", ".replicas"),
        cel("self.backend != 'megatron' || (self.parallelism.context == 1 && self.parallelism.expert == 1)",
            "the megatron trainer runs tensor, pipeline and data parallel: set context and expert to 1",
            ".parallelism"),
    )

    backend: Literal["megatron",
                     "torch"] = Field("megatron",
                                      description="megatron: megatron-core GPTModel; torch: the "
                                                  "small pure-torch model for CPU runs.")
    colocated_engine: Literal["torch", "sglang"] = Field(
        "torch",
        description=("Colocated mode: what generates beside the trainer. torch: an in-process engine on a copy of the "
                              "weights; sglang: an SGLang server started by trainer rank 0 on the same GPUs (memory "
                              "released "
                              "while training on GPU), updated in place after every step."))
    replicas: int = Field(1, ge=1, le=4096, description="Trainer pods (nodes) in the gang.")
    gpus_per_replica: int = Field(8, ge=0, le=16, description="nvidia.com/gpu per trainer pod; 0 runs on CPU.")
    parallelism: Parallelism = Field(default_factory=Parallelism, description="TP/PP/CP/EP sizes.")
    image: str | None = Field(None, max_length=SHORT_STRING_MAX,
                              description="Trainer image; defaults to the operator's configured image for the backend.")
    resources: ResourceRequirements | None = Field(None, description="Container resources beyond the GPUs.")
    env: list[EnvVar] | None = Field(None, max_length=LIST_MAX, json_schema_extra=list_map("name"),
                                     description="Extra environment variables.")
    placement: Placement | None = Field(None,
                                        description="Node pool, tolerations, affinity and priority of trainer pods.")


class RolloutSpec(ApiModel):
    """Where rollouts are generated. Colocated jobs use neither field."""

    cel_rules: ClassVar = (cel("!(has(self.poolRef) && has(self.template))", "set at most one of poolRef and template",
                               ".poolRef"),)

    pool_ref: Name | None = Field(None, description="Name of an existing RolloutPool in this namespace to use.")
    template: RolloutPoolSpec | None = Field(None, description="Spec of a RolloutPool the job creates and owns.")


class JobAgentEnv(ApiModel):
    """An environment the job's episodes use: an existing AgentEnv, or an inline one the job owns."""

    name: Name = Field(description="Name of the AgentEnv (existing, or created with this name when spec is set).")
    spec: AgentEnvSpec | None = Field(None, description="Inline AgentEnv spec; when set the job creates and owns it.")


class PodGroupSpec(ApiModel):
    """Gang-scheduling hooks for schedulers such as Volcano, Kueue or the coscheduling plugin."""

    enabled: bool = Field(False, description="Label trainer pods as one pod group of size replicas.")
    label_key: str = Field("scheduling.x-k8s.io/pod-group", max_length=SHORT_STRING_MAX,
                           description="Pod label naming the group (scheduler specific).")


class SchedulingSpec(ApiModel):
    """Scheduler integration."""

    scheduler_name: str | None = Field(None, max_length=SHORT_STRING_MAX,
                                       description="Scheduler for all pods of the job, e.g. volcano.")
    queue_name: str | None = Field(None, max_length=SHORT_STRING_MAX,
                                   description="Kueue LocalQueue (kueue.x-k8s.io/queue-name label).")
    pod_group: PodGroupSpec = Field(default_factory=PodGroupSpec, description="Gang-scheduling hook.")


class RLJobSpec(ApiModel):
    """Desired state of an RLJob."""

    cel_rules: ClassVar = (
        cel(
            "self.mode != 'colocated' || !has(self.rollout) || (!has(self.rollout.poolRef) && "
            "!has(self.rollout.template))",
            "colocated mode trains and generates on the same GPUs: remove "
            "spec.rollout.poolRef and spec.rollout.template",
            ".rollout",
        ),
        cel(
            "self.mode != 'colocated' || !has(self.maxOffPolicySteps) || self.maxOffPolicySteps == 0",
            "colocated mode is on-policy: maxOffPolicySteps must be 0",
            ".maxOffPolicySteps",
        ),
        cel(
            "self.reward.type != 'agentEnv' || (has(self.agentEnvs) && "
            "self.agentEnvs.exists(e, e.name == self.reward.agentEnv))",
            "reward.agentEnv must name an entry of spec.agentEnvs",
            ".reward.agentEnv",
        ),
        cel(
            "!has(self.curriculum) || self.curriculum.stages.all(s, !has(s.datasets) || s.datasets.all(d, "
            "self.datasets.exists(x, x.name == d)))",
            "curriculum stages may only name datasets listed in spec.datasets",
            ".curriculum",
        ),
        cel(
            "self.datasets.all(s, self.datasets.exists_one(t, t.name == s.name))",
            "dataset names must be unique",
            ".datasets",
        ),
        cel("!has(self.managedBy) || self.managedBy == oldSelf.managedBy", "managedBy is immutable", ".managedBy"),
        cel("self.mode == 'colocated' || !has(self.trainer.colocatedEngine) || self.trainer.colocatedEngine == 'torch'",
            "trainer.colocatedEngine is the colocated mode's engine; a decoupled job generates with its rollout pool "
            "(spec.rollout.template.engine)",
            ".trainer.colocatedEngine"),
        cel("self.trainer.backend != 'megatron' || self.algorithm.entropyCoef == 0.0",
            "the megatron trainer computes no entropies (vocab-parallel entropy is not implemented): set entropyCoef "
            "0, or use trainer.backend torch",
            ".algorithm.entropyCoef"),
        cel("self.trainer.backend != 'torch' || self.model.dtype == 'float32'",
            "the torch backend trains in float32: set model.dtype: float32", ".model.dtype"),
    )

    model: ModelSpec = Field(description="Initial policy and tokenizer.")
    datasets: list[Dataset] = Field(min_length=1, max_length=LIST_MAX, json_schema_extra=list_map("name"),
                                    description="Prompt datasets.")
    curriculum: CurriculumSpec | None = Field(None,
                                              description="Difficulty curriculum; without it every "
                                                          "dataset is used throughout.")
    evaluation: EvaluationSpec | None = Field(None,
                                              description="Held-out evaluation of the current policy "
                                                          "(greedy and sampled); results in the metrics, "
                                                          "status.evaluation and the reward plot.")
    # The default must satisfy RewardSpec's own rules (type verifier needs a verifier): the
    # API server checks defaults against the CEL rules, and the operator would run it.
    reward: RewardSpec = Field(default_factory=lambda: RewardSpec(verifier=VerifierReward(name="exact-match")),
                               description="How responses are scored (default: the exact-match verifier).")
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec, description="Policy-gradient algorithm settings.")
    mode: Literal["colocated",
                  "decoupled"] = Field("decoupled",
                                       description="colocated: train and generate on the same GPUs, on-policy; "
                                                   "decoupled: separate pools, asynchronous.")
    max_off_policy_steps: int | None = Field(
        None, ge=0, le=64,
        description="Decoupled mode: samples from policies more than this many versions older than the trainer are "
                    "dropped (default 1; 0 in colocated mode)."
    )
    trainer: TrainerSpec = Field(default_factory=TrainerSpec, description="The trainer gang.")
    rollout: RolloutSpec | None = Field(None,
                                        description="Rollout pool (decoupled mode); a default "
                                                    "pool is created when unset.")
    agent_envs: list[JobAgentEnv] | None = Field(None, max_length=16, json_schema_extra=list_map("name"),
                                                 description="Agent environments the episodes use.")
    buffer: BufferSpec = Field(default_factory=BufferSpec, description="Trajectory buffer.")
    weight_store: WeightStoreSpec = Field(description="Weight store for syncs from trainer to rollout engines.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpointing.")
    observability: ObservabilitySpec = Field(default_factory=ObservabilitySpec,
                                             description="Run loggers: TensorBoard (on by "
                                                         "default) and Weights & Biases.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Steps, restarts, deadlines and TTL.")
    suspend: bool = Field(False,
                          description="Suspend the job: pods are removed, state and checkpoints kept; false resumes "
                                      "from the last checkpoint.")
    managed_by: str | None = Field(
        None,
        max_length=SHORT_STRING_MAX,
        description="Controller that reconciles this job; kuberl ignores jobs whose value is set and is not "
                    "kuberl.io/operator (e.g. a MultiKueue dispatcher). Immutable.",
    )
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec, description="Scheduler, queue and gang hooks.")

    # Defaults that depend on other fields (the schema cannot express them): kept here, beside
    # the fields, and read through these methods only.
    def effective_max_off_policy_steps(self) -> int:
        """maxOffPolicySteps as it applies: 0 in colocated mode, 1 when unset in decoupled mode."""
        if self.max_off_policy_steps is not None:
            return self.max_off_policy_steps
        return 0 if self.mode == "colocated" else DEFAULT_MAX_OFF_POLICY_STEPS

    def checkpoint_uri(self, namespace: str, name: str) -> str:
        """checkpoint.uri, or the weight store's bucket under <prefix>/<namespace>/<job>/checkpoints."""
        if self.checkpoint.uri:
            return self.checkpoint.uri
        prefix = self.weight_store.prefix.strip("/")
        return f"s3://{self.weight_store.bucket}/{prefix}/{namespace}/{name}/checkpoints"


class RewardStats(ApiModel):
    """Reward statistics of the latest step."""

    mean: str | None = Field(None, max_length=32, description="Mean reward (a decimal string, for printer columns).")
    std: str | None = Field(None, max_length=32, description="Reward standard deviation.")
    pass_rate: str | None = Field(None, max_length=32, description="Fraction of samples with full reward.")


class RolloutCounts(ApiModel):
    """Rollout pods of the job."""

    ready: int = Field(0, ge=0, description="Ready rollout pods.")
    desired: int = Field(0, ge=0, description="Desired rollout pods.")
    summary: str | None = Field(None, max_length=32, description="ready/desired, for printer columns.")


class CheckpointStatus(ApiModel):
    """The newest durable checkpoint."""

    step: int = Field(0, ge=0, description="Step of the checkpoint.")
    uri: str | None = Field(None, max_length=URI_MAX, description="Where it is.")
    time: str | None = Field(None, description="When it was written (RFC 3339).")


class EvaluationScore(ApiModel):
    """One held-out dataset's scores (decimal strings, for printer columns)."""

    dataset: str = Field(max_length=NAME_MAX, description="Evaluation dataset name.")
    greedy: str | None = Field(None, max_length=32, description="Share of prompts whose greedy response passes.")
    pass_at1: str | None = Field(None, max_length=32, description="Mean pass rate of the sampled responses.")
    pass_at_k: str | None = Field(None, max_length=32, description="Mean pass@k over prompts, k = samplesPerPrompt.")
    k: int | None = Field(None, ge=1, description="k of passAtK.")


class EvaluationStatus(ApiModel):
    """The latest held-out evaluation."""

    step: int = Field(0, ge=0, description="Optimizer step the evaluated policy had reached.")
    policy_version: int = Field(0, ge=0, description="Policy version evaluated.")
    results: list[EvaluationScore] | None = Field(None, max_length=LIST_MAX, json_schema_extra=list_map("dataset"),
                                                  description="Per dataset.")


class RLJobStatus(ApiModel):
    """Observed state of an RLJob."""

    phase: Literal["Pending", "Running", "Suspended", "Succeeded",
                   "Failed"] | None = Field(None, description="Summary derived from the conditions.")
    conditions: list[Condition] | None = Field(
        None, max_length=LIST_MAX, json_schema_extra=list_map("type"), description=", ".join(JOB_CONDITION_TYPES) + "."
    )
    observed_generation: int | None = Field(None, ge=0, description="The .metadata.generation the status reflects.")
    step: int = Field(0, ge=0, description="Optimizer steps completed.")
    max_steps: int | None = Field(None, ge=0, description="Steps the job runs for.")
    progress_percent: int | None = Field(None, ge=0, le=100, description="step / maxSteps as a percentage.")
    policy_version: int = Field(0, ge=0, description="Newest policy version published to the weight store.")
    curriculum_stage: str | None = Field(None, max_length=NAME_MAX, description="Current curriculum stage.")
    reward: RewardStats | None = Field(None, description="Reward statistics of the latest step.")
    evaluation: EvaluationStatus | None = Field(None, description="The latest held-out evaluation (spec.evaluation).")
    samples_per_second: str | None = Field(None, max_length=32,
                                           description="Trained samples per second (recent average).")
    infra_failed_samples: int | None = Field(
        None, ge=0,
        description="Samples masked out of the loss because they could not be scored: the reward function raised or "
                                "timed out, or the agent environment was unreachable or "
                                "failed (never trained as a reward of 0).")
    estimated_seconds_remaining: int | None = Field(None, ge=0, description="Time left at the current rate.")
    rollout: RolloutCounts | None = Field(None, description="Rollout pods ready/desired.")
    last_checkpoint: CheckpointStatus | None = Field(None, description="Newest checkpoint.")
    restarts: int = Field(0, ge=0, description="Gang restarts so far.")
    disruptions: int = Field(0, ge=0,
                             description="Gang restarts caused by evictions or preemptions (pods with a "
                                         "DisruptionTarget condition); they do not count against backoffLimit.")
    start_time: str | None = Field(None, description="When the trainer first started (RFC 3339).")
    completion_time: str | None = Field(None, description="When the job succeeded or failed (RFC 3339).")


class RLJob(ApiModel):
    """A reinforcement-learning post-training job."""

    cel_rules: ClassVar = (
        cel(
            f"size(self.metadata.name) <= {JOB_NAME_MAX}",
            f"metadata.name must be at most {JOB_NAME_MAX} characters (pod and stream names are derived from it)",
        ),
        dns_label_rule("RLJob", "its trainer Service's and pods' names", JOB_NAME_MAX),
    )

    kind_info: ClassVar = {
        "kind": "RLJob",
        "plural": "rljobs",
        "singular": "rljob",
        "short_names": ["rlj"],
    }

    api_version: Literal[API_VERSION] = Field(API_VERSION, description=API_VERSION)
    kind: Literal["RLJob"] = Field("RLJob", description="RLJob")
    metadata: dict = Field(default_factory=dict, description="Standard object metadata.")
    spec: RLJobSpec = Field(description="Desired state.")
    status: RLJobStatus | None = Field(None, description="Observed state, written by the operator.")
