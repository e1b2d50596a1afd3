"""The sections of an RLJob spec that workload processes read, as pydantic models.

The operator's API (kuberl.operator.api) composes these into the RLJob kind and generates
the CRD from them; workload processes receive the same sections in their rendered config
(kuberl.workloads.config). Defining them here keeps one source of truth while the
dependency points the allowed way (operator -> workloads, never back).
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

# Bounds that keep the API server's CEL cost estimate small and names usable as labels.
NAME_MAX = 63
SHORT_STRING_MAX = 253
URI_MAX = 2048
LIST_MAX = 64


class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    # CEL rules (x-kubernetes-validations) attached to this object's schema: each is a
    # dict with `rule`, `message` and optionally `fieldPath`/`reason`. Kept on the class
    # so the generator and the docs see them next to the fields they constrain.
    cel_rules: ClassVar[tuple[dict[str, str], ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: cs.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        target = handler.resolve_ref_schema(json_schema)
        if cls.cel_rules:
            target["x-kubernetes-validations"] = [dict(rule) for rule in cls.cel_rules]
        return json_schema

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest: camelCase, unset fields omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


Name = Annotated[
    str,
    Field(min_length=1, max_length=NAME_MAX, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
]
"""A DNS-1123 label: what Kubernetes accepts as the name of a Service or a label value."""


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, str]:
    """One x-kubernetes-validations entry."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def list_map(*keys: str) -> dict[str, Any]:
    """Schema hints for a list whose items are identified by `keys` (server-side apply merges by them)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


class SecretRef(ApiModel):
    """A Secret in the same namespace."""

    name: Name = Field(description="Name of the Secret.")


class HubCache(ApiModel):
    """A Hugging Face hub cache on a PersistentVolumeClaim (its ``models--org--name`` and
    ``datasets--org--name`` folders, as ``huggingface-cli download`` writes them)."""

    claim_name: Name = Field(description="PersistentVolumeClaim in the job's namespace holding the cache; mounted read-only.")
    sub_path: str | None = Field(None, max_length=SHORT_STRING_MAX, pattern=r"^[A-Za-z0-9_][-._A-Za-z0-9]*(/[A-Za-z0-9_][-._A-Za-z0-9]*)*$",
                                 description="Folder within the claim that is the hub cache; default: the claim's root.")


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
    hub_cache: HubCache | None = Field(None, description=(
        "Where the job's pods read hf:// model, tokenizer and dataset sources: mounted read-only in the trainer and rollout "
        "pods at /var/cache/huggingface/hub (HF_HUB_CACHE, offline). Without it hf:// resolves from a cache in the image."))


class Dataset(ApiModel):
    """A prompt dataset. Small curated sets are the norm."""

    name: Name = Field(description="Name the curriculum stages refer to.")
    source: str = Field(
        min_length=1,
        max_length=URI_MAX,
        description="A JSONL file: file:///….jsonl, s3://bucket/….jsonl (weight store endpoint), hf://org/name[@rev]/path.jsonl (mounted hub cache); or builtin://arithmetic (generated problems).",
    )
    prompt_field: str = Field("prompt", max_length=SHORT_STRING_MAX, description="JSONL field with the prompt: text, or chat turns [{role, content}] rendered with the model's chat template.")
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


def python_entry_point_problem(entry_point: str) -> str | None:
    """Why ``entry_point`` may not be a reward, or None. The standard library and builtins are
    refused: `os:system`, `builtins:eval` and their like would run the model's output as a
    command or code in the agent; a reward is the user's own module in the workload image."""
    module = entry_point.partition(":")[0]
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "__main__":
        return (f"{entry_point!r} is in Python's standard library ({top}); a reward must be a function of "
                "your own module (module.path:function), shipped in the workload image")
    return None


class PythonReward(ApiModel):
    """A custom reward function shipped in the workload image."""

    entry_point: str = Field(
        max_length=SHORT_STRING_MAX,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="module.path:function taking (prompt, response, sample) and returning a float; "
                    "it runs in a child process of the rollout agent and may not be in the standard library.",
    )
    timeout_seconds: float = Field(
        10.0, ge=0.1, le=3600.0,
        description="A call that has not returned after this long is abandoned (its process killed): "
                    "the sample is an infrastructure failure, masked out of the loss and counted.",
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


class StalenessHandling(ApiModel):
    """What happens to a sample generated more than maxOffPolicySteps versions before the trainer."""

    policy: Literal["drop", "downweight"] = Field("drop", description="drop: the sample is not trained on (its prompt is re-issued); downweight: its loss is multiplied by decay^(lag − maxOffPolicySteps).")
    decay: float = Field(0.5, gt=0.0, lt=1.0, description="downweight: factor per version beyond maxOffPolicySteps.")
    min_weight: float = Field(0.05, gt=0.0, le=1.0, description="downweight: samples whose weight would fall below this are dropped.")


class OffPolicyCorrection(ApiModel):
    """Correction of samples whose behaviour policy (an older version, or an engine with other
    numerics such as FP8) differs from the trainer's proximal policy."""

    cel_rules: ClassVar = (
        cel("self.low <= self.high", "low must be less than or equal to high", ".low"),
        cel("self.method != 'mask' || self.low < 1.0", "method mask keeps tokens whose ratio is in [low, high]: low must be below 1", ".low"),
    )

    method: Literal["truncate", "mask", "none"] = Field(
        "truncate",
        description="truncate: weight each token by its ratio pi_old/pi_behaviour clamped to [low, high] (truncated IS); "
                    "mask: tokens whose ratio leaves [low, high] get no gradient, the others their ratio (IcePop / masked IS); none: no correction.",
    )
    low: float = Field(0.0, ge=0.0, le=1.0, description="Lower bound of the ratio (truncate: clamp; mask: band edge).")
    high: float = Field(2.0, ge=1.0, le=100.0, description="Upper bound of the ratio (truncate: clamp; mask: band edge).")
    staleness: StalenessHandling = Field(default_factory=StalenessHandling, description="Samples older than maxOffPolicySteps versions (decoupled mode).")


class EvaluationSpec(ApiModel):
    """Held-out evaluation on the current policy: greedy and sampled."""

    datasets: list[Dataset] = Field(min_length=1, max_length=LIST_MAX, json_schema_extra=list_map("name"), description="Held-out prompt datasets (not trained on), scored with the job's reward.")
    interval_steps: int = Field(50, ge=1, le=10_000_000, description="Evaluate every N optimizer steps, and after the last.")
    samples_per_prompt: int = Field(4, ge=1, le=1024, description="Sampled responses per prompt (temperature of the job): pass@1 is their mean, pass@k the chance one of k passes.")
    max_prompts: int = Field(64, ge=1, le=100_000, description="Prompts per dataset per evaluation (the first ones of the dataset, the same every time).")


class AlgorithmSpec(ApiModel):
    """The policy-gradient algorithm (GRPO family)."""

    cel_rules: ClassVar = (
        # Accepted by the schema, not yet by the trainer: refused rather than ignored.
        cel("self.topP == 1.0", "topP < 1 (nucleus sampling) is not implemented by the engines yet: set 1.0", ".topP"),
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
        cel(
            "self.rolloutBatchSize % self.globalBatchSize == 0",
            "rolloutBatchSize must be a multiple of globalBatchSize: each rollout batch is cut into rolloutBatchSize/globalBatchSize optimizer steps",
            ".rolloutBatchSize",
        ),
        cel(
            "!has(self.microBatchSize) || self.microBatchSize <= self.globalBatchSize",
            "microBatchSize must not exceed globalBatchSize",
            ".microBatchSize",
        ),
    )

    group_size: int = Field(8, ge=2, le=1024, description="Responses sampled per prompt; advantages are normalised within each group.")
    loss_aggregation: Literal["token", "sequence"] = Field("token", description="token: mean over all valid tokens of the batch; sequence: mean of per-sequence means.")
    clip_eps_low: float = Field(0.2, ge=0.0, le=1.0, description="Lower clip epsilon of the probability ratio.")
    clip_eps_high: float = Field(0.28, ge=0.0, le=10.0, description="Upper clip epsilon (clip-higher keeps exploration alive).")
    kl_coef: float = Field(0.0, ge=0.0, le=10.0, description="Weight of the KL penalty to the reference policy (the initial policy, kept frozen) in the loss; 0 disables it and the reference model.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="Per-token KL estimator: k3 = exp(d)-d-1 (unbiased, non-negative), k2 = d^2/2, k1 = -d, with d = log pi_ref - log pi.")
    advantage_scaling: Literal["groupStd", "none"] = Field(
        "groupStd",
        description="groupStd: (r - group mean) / (unbiased group std + 1e-6), as GRPO; none: r - group mean (Dr. GRPO: no up-weighting of nearly solved or nearly failed groups). "
                    "Groups whose rewards differ by at most 1e-6 get exactly 0.",
    )
    entropy_coef: float = Field(0.0, ge=0.0, le=1.0, description="Entropy bonus weight.")
    learning_rate: float = Field(1e-6, gt=0.0, le=1.0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0.0, le=1000.0, description="Global gradient-norm clip.")
    global_batch_size: int = Field(256, ge=2, le=1_048_576, description="Samples (responses) per optimizer step (a mini-batch).")
    rollout_batch_size: int = Field(256, ge=2, le=1_048_576, description="Samples per rollout batch: generated per round (colocated) or taken from the buffer (decoupled); its proximal logprobs are computed once, then it is trained as rolloutBatchSize/globalBatchSize optimizer steps, epochs times.")
    epochs: int = Field(1, ge=1, le=64, description="Passes over each rollout batch.")
    micro_batch_size: int | None = Field(None, ge=1, le=1_048_576, description="Samples per forward/backward with gradient accumulation; unset runs the whole mini-batch at once. Does not change the result.")
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


class BufferSpec(ApiModel):
    """The NATS JetStream trajectory buffer."""

    cel_rules: ClassVar = (
        cel("self.url.matches('^(nats|tls)://[^/@]+$')",
            "url must be nats://host:port or tls://host:port, without user or password in it: put credentials in the Secret named by credentialsSecret", ".url"),
    )

    url: str = Field("nats://kuberl-nats.kuberl-system:4222", min_length=1, max_length=URI_MAX, description="NATS server URL.")
    credentials_secret: SecretRef | None = Field(None, description="Secret the job's processes (and the operator) authenticate to NATS with: a `creds` key (NATS credentials file), or `user` and `password`, or `token`. Mounted into trainer and rollout pods; its values never enter the job's ConfigMap.")
    stream_replicas: int = Field(1, ge=1, le=5, description="JetStream replicas of the job's streams.")
    # JetStream reserves this much storage up front per stream, so the default stays modest.
    max_stream_bytes: int = Field(1024**3, ge=1024**2, le=1024**5, description="Cap on the trajectory stream's size in bytes (JetStream reserves it when the stream is created).")
    max_in_flight_prompts: int = Field(512, ge=1, le=1_000_000, description="Prompt groups issued but not yet trained on (back-pressure).")


class WeightStoreSpec(ApiModel):
    """The S3 weight store used for weight syncs."""

    cel_rules: ClassVar = (
        cel("!has(self.endpoint) || self.endpoint.matches('^https?://[^/@]+(/.*)?$')",
            "endpoint must be http(s)://host[:port] without user or password in it: put the keys in the Secret named by credentialsSecret", ".endpoint"),
    )

    endpoint: str | None = Field(None, max_length=URI_MAX, description="S3 endpoint URL; empty uses AWS's.")
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$", description="Bucket name.")
    prefix: str = Field("kuberl", max_length=1024, description="Key prefix; versions go under <prefix>/<namespace>/<job>/v<N>/.")
    region: str | None = Field(None, max_length=64, description="S3 region.")
    credentials_secret: SecretRef | None = Field(None, description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN), set from it as environment variables of the trainer and rollout agents; empty: the pods' own AWS identity (e.g. IRSA).")
    fp8: bool = Field(False, description="Publish blockwise FP8 weights (128x128, e4m3, per-block scale) for the rollout engines.")
    sync_interval_steps: int = Field(1, ge=1, le=100000, description="Publish new weights to the store every N optimizer steps (and at the last). Colocated mode: the engine beside the trainer takes every step's weights in place; the store gets a version every N steps.")
    keep_versions: int = Field(3, ge=1, le=1000, description="Weight versions kept; older ones are pruned (but never a version a kept one is stored against).")
    full_version_every: int = Field(1, ge=1, le=1000, description="Store every Nth weight version whole and those between as deltas against the version before (the 16-bit words that changed and a bitmap of where; rebuilt and sha256-checked by the fetcher, which needs at most one whole version and N-1 deltas). The trainer keeps the version it published last on local disk for this. 1: every version whole.")


class CheckpointSpec(ApiModel):
    """Trainer checkpoints (the state that must survive failures)."""

    uri: str | None = Field(None, max_length=URI_MAX, description="s3://… or a path on a mounted volume; defaults to the weight store under checkpoints/.")
    interval_steps: int = Field(50, ge=1, le=10_000_000, description="Checkpoint every N optimizer steps.")
    keep: int = Field(2, ge=1, le=1000, description="Checkpoints kept.")


class SecretKeyRef(ApiModel):
    """One key of a Secret in the job's namespace."""

    name: Name = Field(description="Name of the Secret.")
    key: str = Field("apiKey", min_length=1, max_length=SHORT_STRING_MAX, pattern=r"^[-._a-zA-Z0-9]+$", description="Key within the Secret.")


class TensorBoardSpec(ApiModel):
    """TensorBoard event files of the run."""

    enabled: bool = Field(True, description="Write event files (the scalars of metrics.jsonl, the staleness histogram) to <output>/tensorboard; "
                                            "in a cluster the trainer copies them to <checkpoint uri>/run/tensorboard/ after every checkpoint and at the end.")


class WandbSpec(ApiModel):
    """Weights & Biases run logging."""

    cel_rules: ClassVar = (
        cel("self.mode != 'online' || has(self.apiKeySecret)",
            "mode online needs apiKeySecret: the Secret (and key, default apiKey) holding the W&B API key. "
            "Use mode offline to write a run directory you sync later with `wandb sync`", ".apiKeySecret"),
    )

    project: str = Field(min_length=1, max_length=128, description="W&B project.")
    entity: str | None = Field(None, max_length=128, description="W&B entity (user or team); the key's default entity when unset.")
    mode: Literal["online", "offline"] = Field("online", description="online: stream to W&B (needs apiKeySecret); offline: a run directory under <output>/wandb "
                                                                      "(in a cluster copied to <checkpoint uri>/run/wandb/) to upload later with `wandb sync`.")
    api_key_secret: SecretKeyRef | None = Field(None, description="Secret key holding the W&B API key (set as WANDB_API_KEY in the trainer); kuberl run reads WANDB_API_KEY from its own environment instead.")
    base_url: str | None = Field(None, max_length=URI_MAX, pattern=r"^https?://", description="A self-hosted W&B server (WANDB_BASE_URL).")
    group: str | None = Field(None, max_length=128, description="W&B run group (e.g. an ablation).")
    tags: list[Annotated[str, Field(max_length=64)]] | None = Field(None, max_length=LIST_MAX, description="W&B run tags.")


class ObservabilitySpec(ApiModel):
    """Run loggers beside metrics.jsonl. Prometheus metrics are always on (port 9400, /metrics, on trainer and rollout pods)."""

    tensorboard: TensorBoardSpec = Field(default_factory=TensorBoardSpec, description="TensorBoard event files (on by default).")
    wandb: WandbSpec | None = Field(None, description="Weights & Biases logging (off when unset).")


class RunPolicy(ApiModel):
    """Lifecycle limits, as on a Kubernetes Job."""

    max_steps: int = Field(1000, ge=1, le=100_000_000, description="Optimizer steps after which the job succeeds.")
    backoff_limit: int = Field(3, ge=0, le=1000, description="Gang restarts after a trainer failure before the job fails.")
    active_deadline_seconds: int | None = Field(None, ge=1, description="The job fails when it runs longer than this.")
    ttl_seconds_after_finished: int | None = Field(None, ge=0, description="Delete the job this long after it succeeds or fails.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the initial weights, the warm start, the prompt order and the sampling: runs with the same seed and settings start alike.")
