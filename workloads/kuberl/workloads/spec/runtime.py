"""Where a job runs and what it keeps: parallelism, the buffer, the weight store, checkpoints, the run
loggers and the run policy."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from kuberl.workloads.spec.base import LIST_MAX, SHORT_STRING_MAX, URI_MAX, ApiModel, Name, SecretRef, cel


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
            "url must be nats://host:port or tls://host:port, without user or password in it: put credentials in the "
            "Secret named by credentialsSecret", ".url"),
    )

    url: str = Field("nats://kuberl-nats.kuberl-system:4222", min_length=1, max_length=URI_MAX,
                     description="NATS server URL.")
    credentials_secret: SecretRef | None = Field(None,
                                                 description="Secret the job's processes (and the operator) "
                                                             "authenticate to NATS with: a `creds` key (NATS "
                                                             "credentials file), or `user` and `password`, or `token`. "
                                                             "Mounted into trainer and rollout pods; its values never "
                                                             "enter the job's ConfigMap.")
    stream_replicas: int = Field(1, ge=1, le=5, description="JetStream replicas of the job's streams.")
    # JetStream reserves this much storage up front per stream, so the default stays modest.
    max_stream_bytes: int = Field(1024**3, ge=1024**2, le=1024**5,
                                  description="Cap on the trajectory stream's size in bytes (JetStream reserves it "
                                              "when the stream is created).")
    max_in_flight_prompts: int = Field(512, ge=1, le=1_000_000,
                                       description="Prompt groups issued but not yet trained on (back-pressure).")


class WeightStoreSpec(ApiModel):
    """The S3 weight store used for weight syncs."""

    cel_rules: ClassVar = (
        cel("!has(self.endpoint) || self.endpoint.matches('^https?://[^/@]+(/.*)?$')",
            "endpoint must be http(s)://host[:port] without user or password in "
            "it: put the keys in the Secret named by credentialsSecret", ".endpoint"),
    )

    endpoint: str | None = Field(None, max_length=URI_MAX, description="S3 endpoint URL; empty uses AWS's.")
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$",
                        description="Bucket name.")
    prefix: str = Field("kuberl", max_length=1024,
                        description="Key prefix; versions go under <prefix>/<namespace>/<job>/v<N>/.")
    region: str | None = Field(None, max_length=64, description="S3 region.")
    credentials_secret: SecretRef | None = Field(None,
                                                 description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                                                             "(and optionally AWS_SESSION_TOKEN), set from it as "
                                                             "environment variables of the trainer and rollout agents; "
                                                             "empty: the pods' own AWS identity (e.g. IRSA).")
    fp8: bool = Field(False,
                      description="Publish blockwise FP8 weights (128x128, e4m3, "
                                  "per-block scale) for the rollout engines.")
    sync_interval_steps: int = Field(1, ge=1, le=100000,
                                     description="Publish new weights to the store every N optimizer steps (and at the "
                                                 "last). Colocated mode: the engine beside the trainer takes every "
                                                 "step's weights in place; the store gets a version every N steps.")
    keep_versions: int = Field(3, ge=1, le=1000,
                               description="Weight versions kept; older ones are pruned (but never "
                                           "a version a kept one is stored against).")
    full_version_every: int = Field(1, ge=1, le=1000,
                                    description="Store every Nth weight version whole and those between as "
                                                "deltas against the version before (the 16-bit words that "
                                                "changed and a bitmap of where; rebuilt and sha256-checked by "
                                                "the fetcher, which needs at most one whole version and N-1 "
                                                "deltas). The trainer keeps the version it published last on "
                                                "local disk for this. 1: every version whole.")


class CheckpointSpec(ApiModel):
    """Trainer checkpoints (the state that must survive failures)."""

    uri: str | None = Field(None, max_length=URI_MAX,
                            description="s3://… or a path on a mounted volume; defaults to "
                                        "the weight store under checkpoints/.")
    interval_steps: int = Field(50, ge=1, le=10_000_000, description="Checkpoint every N optimizer steps.")
    keep: int = Field(2, ge=1, le=1000, description="Checkpoints kept.")


class SecretKeyRef(ApiModel):
    """One key of a Secret in the job's namespace."""

    name: Name = Field(description="Name of the Secret.")
    key: str = Field("apiKey", min_length=1, max_length=SHORT_STRING_MAX, pattern=r"^[-._a-zA-Z0-9]+$",
                     description="Key within the Secret.")


class TensorBoardSpec(ApiModel):
    """TensorBoard event files of the run."""

    enabled: bool = Field(True,
                          description="Write event files (the scalars of metrics.jsonl, the "
                                      "staleness histogram) to <output>/tensorboard; "
                                            "in a cluster the trainer copies them to <checkpoint uri>/run/tensorboard/ "
                                            "after every checkpoint and at the end.")


class WandbSpec(ApiModel):
    """Weights & Biases run logging."""

    cel_rules: ClassVar = (
        cel("self.mode != 'online' || has(self.apiKeySecret)",
            "mode online needs apiKeySecret: the Secret (and key, default apiKey) holding the W&B API key. "
            "Use mode offline to write a run directory you sync later with `wandb sync`", ".apiKeySecret"),
    )

    project: str = Field(min_length=1, max_length=128, description="W&B project.")
    entity: str | None = Field(None, max_length=128,
                               description="W&B entity (user or team); the key's default entity when unset.")
    mode: Literal["online",
                  "offline"] = Field("online",
                                     description="online: stream to W&B (needs apiKeySecret); "
                                                 "offline: a run directory under <output>/wandb "
                                                                      "(in a cluster copied to <checkpoint "
                                                                      "uri>/run/wandb/) to upload later "
                                                                      "with `wandb sync`.")
    api_key_secret: SecretKeyRef | None = Field(None,
                                                description="Secret key holding the W&B API key (set as WANDB_API_KEY "
                                                            "in the trainer); kuberl run reads WANDB_API_KEY from its "
                                                            "own environment instead.")
    base_url: str | None = Field(None, max_length=URI_MAX, pattern=r"^https?://",
                                 description="A self-hosted W&B server (WANDB_BASE_URL).")
    group: str | None = Field(None, max_length=128, description="W&B run group (e.g. an ablation).")
    tags: list[Annotated[str, Field(max_length=64)]] | None = Field(None, max_length=LIST_MAX,
                                                                    description="W&B run tags.")


class ObservabilitySpec(ApiModel):
    """Run loggers beside metrics.jsonl. Prometheus metrics are always on (port 9400, /metrics, on
    trainer and rollout pods)."""

    tensorboard: TensorBoardSpec = Field(default_factory=TensorBoardSpec,
                                         description="TensorBoard event files (on by default).")
    wandb: WandbSpec | None = Field(None, description="Weights & Biases logging (off when unset).")


class RunPolicy(ApiModel):
    """Lifecycle limits, as on a Kubernetes Job."""

    max_steps: int = Field(1000, ge=1, le=100_000_000, description="Optimizer steps after which the job succeeds.")
    backoff_limit: int = Field(3, ge=0, le=1000,
                               description="Gang restarts after a trainer failure before the job fails.")
    active_deadline_seconds: int | None = Field(None, ge=1, description="The job fails when it runs longer than this.")
    ttl_seconds_after_finished: int | None = Field(None, ge=0,
                                                   description="Delete the job this long after it succeeds or fails.")
    seed: int = Field(0, ge=0, le=2**31 - 1,
                      description="Seed of the initial weights, the warm start, the prompt order and the sampling: "
                                  "runs with the same seed and settings start alike.")
