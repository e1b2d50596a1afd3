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
    SecretRef,
    cel,
    list_map,
)
from kuberl.operator.api.rolloutpool import RolloutPoolSpec

# Pod names are "<job>-trainer-<index>"; they must stay valid DNS labels (63 chars).
JOB_NAME_MAX = 40


class ModelSpec(ApiModel):
    """Where the initial policy and its tokenizer come from."""

    source: str = Field(
        min_length=1,
        max_length=URI_MAX,
        description="Initial weights: s3://bucket/prefix, hf://org/name (pre-fetched into the image or a volume), file:///path, or builtin://tiny (a small CPU model).",
    )
    tokenizer: str | None = Field(None, max_length=URI_MAX, description="Tokenizer location; defaults to the model source.")
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="Training precision of the master weights' compute.")
    warmup_sft_steps: int = Field(0, ge=0, le=100000, description="Supervised warm-start steps on the dataset's reference answers before RL (tiny CPU models).")


class Dataset(ApiModel):
    """A prompt dataset. Small curated sets are the norm."""

    name: Name = Field(description="Name the curriculum stages refer to.")
    source: str = Field(
        min_length=1,
        max_length=URI_MAX,
        description="s3://…/file.jsonl, file:///….jsonl, or builtin://arithmetic (generated problems).",
    )
    prompt_field: str = Field("prompt", max_length=SHORT_STRING_MAX, description="JSONL field with the prompt text.")
    answer_field: str = Field("answer", max_length=SHORT_STRING_MAX, description="JSONL field with the reference answer the verifier checks.")
    difficulty_field: str | None = Field(None, max_length=SHORT_STRING_MAX, description="JSONL field with a numeric difficulty the curriculum filters on.")
    max_prompts: int | None = Field(None, ge=1, le=100_000_000, description="Use at most this many prompts.")


class DifficultyRange(ApiModel):
    """An inclusive range on the dataset's difficulty field."""

    cel_rules: ClassVar = (cel("!has(self.min) || !has(self.max) || self.min <= self.max", "min must be less than or equal to max", ".min"),)

    min: float | None = Field(None, description="Lowest difficulty included.")
    max: float | None = Field(None, description="Highest difficulty included.")


class StageSwitch(ApiModel):
    """When a curriculum stage ends. Set exactly one."""

    cel_rules: ClassVar = (
        cel("has(self.steps) != has(self.passRate)", "set exactly one of steps or passRate"),
    )

    steps: int | None = Field(None, ge=1, le=10_000_000, description="End the stage after this many optimizer steps in it.")
    pass_rate: float | None = Field(None, gt=0.0, le=1.0, description="End the stage when the moving pass rate reaches this value.")
    window: int = Field(4, ge=1, le=1000, description="Steps the moving pass rate averages over.")


class CurriculumStage(ApiModel):
    """One stage of a difficulty curriculum."""

    name: Name = Field(description="Stage name, shown in status.")
    datasets: list[Name] | None = Field(None, max_length=LIST_MAX, description="Datasets this stage draws from; all datasets when empty.")
    difficulty: DifficultyRange | None = Field(None, description="Prompt filter on the difficulty field.")
    samples_per_prompt: int | None = Field(None, ge=1, le=1024, description="Group size in this stage; overrides algorithm.groupSize (hard stages sample more).")
    max_response_length: int | None = Field(None, ge=1, le=1_048_576, description="Response length cap in this stage; overrides algorithm.maxResponseLength.")
    until: StageSwitch | None = Field(None, description="When to move on; the last stage runs to the end of the job.")


class CurriculumSpec(ApiModel):
    """A multi-stage difficulty curriculum."""

    cel_rules: ClassVar = (
        cel(
            "self.stages.all(s, self.stages.exists_one(t, t.name == s.name))",
            "stage names must be unique",
            ".stages",
        ),
        cel(
            "self.stages.all(s, s == self.stages[size(self.stages) - 1] || has(s.until))",
            "every stage but the last needs an until condition",
            ".stages",
        ),
    )

    stages: list[CurriculumStage] = Field(min_length=1, max_length=16, description="Stages in order.")


class VerifierReward(ApiModel):
    """A built-in verifier."""

    name: Literal["arithmetic", "math-boxed", "exact-match"] = Field(description="Which built-in verifier scores responses against the reference answer.")


class PythonReward(ApiModel):
    """A custom reward function shipped in the workload image."""

    entry_point: str = Field(
        max_length=SHORT_STRING_MAX,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="module.path:function taking (prompt, response, sample) and returning a float.",
    )


class RewardSpec(ApiModel):
    """How responses are scored. Set the field that matches type."""

    cel_rules: ClassVar = (
        cel("self.type != 'verifier' || has(self.verifier)", "type verifier needs the verifier field", ".verifier"),
        cel("self.type != 'agentEnv' || has(self.agentEnv)", "type agentEnv needs the agentEnv field naming an entry of spec.agentEnvs", ".agentEnv"),
        cel("self.type != 'python' || has(self.python)", "type python needs the python field", ".python"),
    )

    type: Literal["verifier", "agentEnv", "python"] = Field("verifier", description="verifier (built in), agentEnv (the environment returns the reward), or python (custom entry point).")
    verifier: VerifierReward | None = Field(None, description="Built-in verifier settings.")
    agent_env: Name | None = Field(None, description="Name of the agent environment (in spec.agentEnvs) whose episodes return the reward.")
    python: PythonReward | None = Field(None, description="Custom reward entry point.")


class OffPolicyCorrection(ApiModel):
    """Importance-ratio correction of stale samples against their behaviour logprobs."""

    enabled: bool = Field(True, description="Weight each token by min(pi_train/pi_behaviour, truncation).")
    truncation: float = Field(2.0, ge=1.0, le=100.0, description="Cap on the importance ratio (truncated importance sampling).")


class AlgorithmSpec(ApiModel):
    """The policy-gradient algorithm (GRPO family)."""

    cel_rules: ClassVar = (
        cel("self.clipEpsLow <= self.clipEpsHigh", "clipEpsLow must be less than or equal to clipEpsHigh", ".clipEpsLow"),
        cel(
            "self.globalBatchSize % self.groupSize == 0",
            "globalBatchSize must be a multiple of groupSize (whole groups per step)",
            ".globalBatchSize",
        ),
        cel(
            "self.rolloutBatchSize % self.groupSize == 0",
            "rolloutBatchSize must be a multiple of groupSize",
            ".rolloutBatchSize",
        ),
    )

    group_size: int = Field(8, ge=2, le=1024, description="Responses sampled per prompt; advantages are normalised within each group.")
    loss_aggregation: Literal["token", "sequence"] = Field("token", description="token: mean over all valid tokens of the batch; sequence: mean of per-sequence means.")
    clip_eps_low: float = Field(0.2, ge=0.0, le=1.0, description="Lower clip epsilon of the probability ratio.")
    clip_eps_high: float = Field(0.28, ge=0.0, le=10.0, description="Upper clip epsilon (clip-higher keeps exploration alive).")
    kl_coef: float = Field(0.0, ge=0.0, le=10.0, description="Weight of the KL penalty to the reference policy (k3 estimator); 0 disables it and the reference model.")
    entropy_coef: float = Field(0.0, ge=0.0, le=1.0, description="Entropy bonus weight.")
    learning_rate: float = Field(1e-6, gt=0.0, le=1.0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0.0, le=1000.0, description="Global gradient-norm clip.")
    global_batch_size: int = Field(256, ge=2, le=1_048_576, description="Samples (responses) per optimizer step.")
    rollout_batch_size: int = Field(256, ge=2, le=1_048_576, description="Samples generated per rollout round.")
    max_prompt_length: int = Field(1024, ge=1, le=1_048_576, description="Prompts longer than this are skipped.")
    max_response_length: int = Field(4096, ge=1, le=1_048_576, description="Response length cap (single-stage long-context RL: just raise it).")
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    dynamic_sampling: bool = Field(False, description="Drop groups whose rewards are all equal (no learning signal).")
    over_sampling_factor: float = Field(1.0, ge=1.0, le=16.0, description="Generate this many times the needed groups so dynamic sampling still fills the batch.")
    off_policy_correction: OffPolicyCorrection = Field(default_factory=OffPolicyCorrection, description="Correction for samples produced by older policies.")


class Parallelism(ApiModel):
    """Model parallelism of the trainer (megatron-core)."""

    tensor: int = Field(1, ge=1, le=64, description="Tensor-parallel size.")
    pipeline: int = Field(1, ge=1, le=256, description="Pipeline-parallel size.")
    context: int = Field(1, ge=1, le=64, description="Context-parallel size.")
    expert: int = Field(1, ge=1, le=1024, description="Expert-parallel size (MoE models).")


class TrainerSpec(ApiModel):
    """The trainer gang: one pod per replica, started and restarted together."""

    cel_rules: ClassVar = (
        cel(
            "(self.replicas * (self.gpusPerReplica > 0 ? self.gpusPerReplica : 1)) % (self.parallelism.tensor * self.parallelism.pipeline * self.parallelism.context) == 0",
            "tensor x pipeline x context parallel sizes must divide the number of trainer ranks (replicas x gpusPerReplica)",
            ".parallelism",
        ),
        cel("self.backend != 'torch' || self.replicas == 1", "the torch backend is single-replica; use backend megatron for more replicas", ".replicas"),
    )

    backend: Literal["megatron", "torch"] = Field("megatron", description="megatron: megatron-core GPTModel; torch: the small pure-torch model for CPU runs.")
    replicas: int = Field(1, ge=1, le=4096, description="Trainer pods (nodes) in the gang.")
    gpus_per_replica: int = Field(8, ge=0, le=16, description="nvidia.com/gpu per trainer pod; 0 runs on CPU.")
    parallelism: Parallelism = Field(default_factory=Parallelism, description="TP/PP/CP/EP sizes.")
    image: str | None = Field(None, max_length=SHORT_STRING_MAX, description="Trainer image; defaults to the operator's configured image for the backend.")
    resources: ResourceRequirements | None = Field(None, description="Container resources beyond the GPUs.")
    env: list[EnvVar] | None = Field(None, max_length=LIST_MAX, json_schema_extra=list_map("name"), description="Extra environment variables.")
    placement: Placement | None = Field(None, description="Node pool, tolerations, affinity and priority of trainer pods.")


class RolloutSpec(ApiModel):
    """Where rollouts are generated. Colocated jobs use neither field."""

    cel_rules: ClassVar = (cel("!(has(self.poolRef) && has(self.template))", "set at most one of poolRef and template", ".poolRef"),)

    pool_ref: Name | None = Field(None, description="Name of an existing RolloutPool in this namespace to use.")
    template: RolloutPoolSpec | None = Field(None, description="Spec of a RolloutPool the job creates and owns.")


class JobAgentEnv(ApiModel):
    """An environment the job's episodes use: an existing AgentEnv, or an inline one the job owns."""

    name: Name = Field(description="Name of the AgentEnv (existing, or created with this name when spec is set).")
    spec: AgentEnvSpec | None = Field(None, description="Inline AgentEnv spec; when set the job creates and owns it.")


class BufferSpec(ApiModel):
    """The NATS JetStream trajectory buffer."""

    url: str = Field("nats://kuberl-nats.kuberl-system:4222", min_length=1, max_length=URI_MAX, description="NATS server URL.")
    credentials_secret: SecretRef | None = Field(None, description="Secret with a `creds` key (NATS credentials file).")
    stream_replicas: int = Field(1, ge=1, le=5, description="JetStream replicas of the job's streams.")
    max_stream_bytes: int = Field(8 * 1024**3, ge=1024**2, le=1024**5, description="Cap on the trajectory stream's size in bytes.")
    max_in_flight_prompts: int = Field(512, ge=1, le=1_000_000, description="Prompt groups issued but not yet trained on (back-pressure).")


class WeightStoreSpec(ApiModel):
    """The S3 weight store used for weight syncs."""

    endpoint: str | None = Field(None, max_length=URI_MAX, description="S3 endpoint URL; empty uses AWS's.")
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$", description="Bucket name.")
    prefix: str = Field("kuberl", max_length=1024, description="Key prefix; versions go under <prefix>/<namespace>/<job>/v<N>/.")
    region: str | None = Field(None, max_length=64, description="S3 region.")
    credentials_secret: SecretRef | None = Field(None, description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.")
    fp8: bool = Field(False, description="Publish blockwise FP8 weights (128x128, e4m3, per-block scale) for the rollout engines.")
    sync_interval_steps: int = Field(1, ge=1, le=100000, description="Publish new weights every N optimizer steps.")
    keep_versions: int = Field(3, ge=1, le=1000, description="Weight versions kept; older ones are pruned.")


class CheckpointSpec(ApiModel):
    """Trainer checkpoints (the state that must survive failures)."""

    uri: str | None = Field(None, max_length=URI_MAX, description="s3://… or a path on a mounted volume; defaults to the weight store under checkpoints/.")
    interval_steps: int = Field(50, ge=1, le=10_000_000, description="Checkpoint every N optimizer steps.")
    keep: int = Field(2, ge=1, le=1000, description="Checkpoints kept.")


class RunPolicy(ApiModel):
    """Lifecycle limits, as on a Kubernetes Job."""

    max_steps: int = Field(1000, ge=1, le=100_000_000, description="Optimizer steps after which the job succeeds.")
    backoff_limit: int = Field(3, ge=0, le=1000, description="Gang restarts after a trainer failure before the job fails.")
    active_deadline_seconds: int | None = Field(None, ge=1, description="The job fails when it runs longer than this.")
    ttl_seconds_after_finished: int | None = Field(None, ge=0, description="Delete the job this long after it succeeds or fails.")


class PodGroupSpec(ApiModel):
    """Gang-scheduling hooks for schedulers such as Volcano, Kueue or the coscheduling plugin."""

    enabled: bool = Field(False, description="Label trainer pods as one pod group of size replicas.")
    label_key: str = Field("scheduling.x-k8s.io/pod-group", max_length=SHORT_STRING_MAX, description="Pod label naming the group (scheduler specific).")


class SchedulingSpec(ApiModel):
    """Scheduler integration."""

    scheduler_name: str | None = Field(None, max_length=SHORT_STRING_MAX, description="Scheduler for all pods of the job, e.g. volcano.")
    queue_name: str | None = Field(None, max_length=SHORT_STRING_MAX, description="Kueue LocalQueue (kueue.x-k8s.io/queue-name label).")
    pod_group: PodGroupSpec = Field(default_factory=PodGroupSpec, description="Gang-scheduling hook.")


class RLJobSpec(ApiModel):
    """Desired state of an RLJob."""

    cel_rules: ClassVar = (
        cel(
            "self.mode != 'colocated' || !has(self.rollout) || (!has(self.rollout.poolRef) && !has(self.rollout.template))",
            "colocated mode trains and generates on the same GPUs: remove spec.rollout.poolRef and spec.rollout.template",
            ".rollout",
        ),
        cel(
            "self.mode != 'colocated' || !has(self.maxOffPolicySteps) || self.maxOffPolicySteps == 0",
            "colocated mode is on-policy: maxOffPolicySteps must be 0",
            ".maxOffPolicySteps",
        ),
        cel(
            "self.reward.type != 'agentEnv' || (has(self.agentEnvs) && self.agentEnvs.exists(e, e.name == self.reward.agentEnv))",
            "reward.agentEnv must name an entry of spec.agentEnvs",
            ".reward.agentEnv",
        ),
        cel(
            "!has(self.curriculum) || self.curriculum.stages.all(s, !has(s.datasets) || s.datasets.all(d, self.datasets.exists(x, x.name == d)))",
            "curriculum stages may only name datasets listed in spec.datasets",
            ".curriculum",
        ),
        cel(
            "self.datasets.all(s, self.datasets.exists_one(t, t.name == s.name))",
            "dataset names must be unique",
            ".datasets",
        ),
        cel("!has(self.managedBy) || self.managedBy == oldSelf.managedBy", "managedBy is immutable", ".managedBy"),
    )

    model: ModelSpec = Field(description="Initial policy and tokenizer.")
    datasets: list[Dataset] = Field(min_length=1, max_length=LIST_MAX, json_schema_extra=list_map("name"), description="Prompt datasets.")
    curriculum: CurriculumSpec | None = Field(None, description="Difficulty curriculum; without it every dataset is used throughout.")
    reward: RewardSpec = Field(default_factory=RewardSpec, description="How responses are scored.")
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec, description="Policy-gradient algorithm settings.")
    mode: Literal["colocated", "decoupled"] = Field("decoupled", description="colocated: train and generate on the same GPUs, on-policy; decoupled: separate pools, asynchronous.")
    max_off_policy_steps: int | None = Field(
        None, ge=0, le=64, description="Decoupled mode: samples from policies more than this many versions older than the trainer are dropped (default 1; 0 in colocated mode)."
    )
    trainer: TrainerSpec = Field(default_factory=TrainerSpec, description="The trainer gang.")
    rollout: RolloutSpec | None = Field(None, description="Rollout pool (decoupled mode); a default pool is created when unset.")
    agent_envs: list[JobAgentEnv] | None = Field(None, max_length=16, json_schema_extra=list_map("name"), description="Agent environments the episodes use.")
    buffer: BufferSpec = Field(default_factory=BufferSpec, description="Trajectory buffer.")
    weight_store: WeightStoreSpec = Field(description="Weight store for syncs from trainer to rollout engines.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpointing.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Steps, restarts, deadlines and TTL.")
    suspend: bool = Field(False, description="Suspend the job: pods are removed, state and checkpoints kept; false resumes from the last checkpoint.")
    managed_by: str | None = Field(
        None,
        max_length=SHORT_STRING_MAX,
        description="Controller that reconciles this job; kuberl ignores jobs whose value is set and is not kuberl.io/operator (e.g. a MultiKueue dispatcher). Immutable.",
    )
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec, description="Scheduler, queue and gang hooks.")


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


class RLJobStatus(ApiModel):
    """Observed state of an RLJob."""

    phase: Literal["Pending", "Running", "Suspended", "Succeeded", "Failed"] | None = Field(None, description="Summary derived from the conditions.")
    conditions: list[Condition] | None = Field(
        None, max_length=LIST_MAX, json_schema_extra=list_map("type"), description="Created, TrainerReady, RolloutReady, Running, Suspended, Succeeded, Failed."
    )
    observed_generation: int | None = Field(None, ge=0, description="The .metadata.generation the status reflects.")
    step: int = Field(0, ge=0, description="Optimizer steps completed.")
    max_steps: int | None = Field(None, ge=0, description="Steps the job runs for.")
    progress_percent: int | None = Field(None, ge=0, le=100, description="step / maxSteps as a percentage.")
    policy_version: int = Field(0, ge=0, description="Newest policy version published to the weight store.")
    curriculum_stage: str | None = Field(None, max_length=NAME_MAX, description="Current curriculum stage.")
    reward: RewardStats | None = Field(None, description="Reward statistics of the latest step.")
    samples_per_second: str | None = Field(None, max_length=32, description="Trained samples per second (recent average).")
    estimated_seconds_remaining: int | None = Field(None, ge=0, description="Time left at the current rate.")
    rollout: RolloutCounts | None = Field(None, description="Rollout pods ready/desired.")
    last_checkpoint: CheckpointStatus | None = Field(None, description="Newest checkpoint.")
    restarts: int = Field(0, ge=0, description="Gang restarts so far.")
    start_time: str | None = Field(None, description="When the trainer first started (RFC 3339).")
    completion_time: str | None = Field(None, description="When the job succeeded or failed (RFC 3339).")


class RLJob(ApiModel):
    """A reinforcement-learning post-training job."""

    cel_rules: ClassVar = (
        cel(
            f"size(self.metadata.name) <= {JOB_NAME_MAX}",
            f"metadata.name must be at most {JOB_NAME_MAX} characters (pod and stream names are derived from it)",
        ),
    )

    kind_info: ClassVar = {
        "kind": "RLJob",
        "plural": "rljobs",
        "singular": "rljob",
        "short_names": ["rlj"],
    }

    api_version: Literal["kuberl.io/v1alpha1"] = Field("kuberl.io/v1alpha1", description="kuberl.io/v1alpha1")
    kind: Literal["RLJob"] = Field("RLJob", description="RLJob")
    metadata: dict = Field(default_factory=dict, description="Standard object metadata.")
    spec: RLJobSpec = Field(description="Desired state.")
    status: RLJobStatus | None = Field(None, description="Observed state, written by the operator.")

