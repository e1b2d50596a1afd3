"""RolloutPool: an autoscaled set of rollout pods (an inference engine plus the kuberl rollout agent)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from kuberl.operator.api.common import (
    LIST_MAX,
    SHORT_STRING_MAX,
    ApiModel,
    Condition,
    EnvVar,
    Placement,
    ResourceRequirements,
    cel,
    dns_label_rule,
    list_map,
)
from kuberl.operator.api.conditions import READY
from kuberl.operator.api.constants import API_VERSION


class EngineSpec(ApiModel):
    """The inference engine each rollout pod runs."""

    type: Literal["sglang", "torch"] = Field(
        "sglang",
        description="sglang: an SGLang server container; torch: the in-process CPU engine (tiny models, laptops)."
    )
    image: str | None = Field(None, max_length=SHORT_STRING_MAX,
                              description="Engine container image; defaults to the "
                                          "operator's configured image for the type.")
    args: list[str] | None = Field(None, max_length=LIST_MAX,
                                   description="Extra command-line arguments for the engine server.")
    tensor_parallel_size: int = Field(1, ge=1, le=64,
                                      description="Tensor-parallel degree of one engine (GPUs per engine).")
    mem_fraction_static: float = Field(0.85, gt=0.0, le=1.0,
                                       description="Fraction of GPU memory the engine "
                                                   "reserves for weights and KV cache.")
    fp8: bool = Field(False, description="Serve blockwise-FP8 weights (128x128 blocks, e4m3) published by the trainer.")
    max_running_requests: int | None = Field(None, ge=1, le=65536,
                                             description="Upper bound on concurrent requests per engine.")
    context_length: int | None = Field(None, ge=128, le=4_194_304,
                                       description="Maximum context length the engine accepts.")


class AgentSpec(ApiModel):
    """The kuberl rollout agent container beside the engine."""

    image: str | None = Field(None, max_length=SHORT_STRING_MAX,
                              description="Rollout agent image; defaults to the operator's workload image.")
    concurrency: int = Field(8, ge=1, le=4096, description="Prompt groups one agent generates at the same time.")
    weight_swap: Literal["pause", "drain"] = Field(
        "pause",
        description=("On a new policy version: pause (swap between two engine batches; in-flight episodes continue on "
                     "the "
                     "new weights, every token's behaviour logprob recorded) or drain (start nothing new until "
                     "in-flight groups finish on the old weights)."),
    )
    abandon_stale_groups: bool = Field(
        True,
        description=(
            "Stop a group the moment the trainer has moved more than maxOffPolicySteps past the version it "
            "was generated "
            "with (the trainer would drop it) and hand its prompt back for a fresh attempt on current weights."
        ),
    )
    weight_fetch: Literal["perNode", "perAgent"] = Field(
        "perNode",
        description=("Where a policy version's files come from: perNode (one "
                     "agent per node downloads it from the weight store; the "
                     "node's other agents copy it from that agent over the pod "
                     "network, every file checked against the store's manifest, "
                     "and download it themselves when the copy fails) or "
                     "perAgent (every agent downloads it)."),
    )
    env: list[EnvVar] | None = Field(None, max_length=LIST_MAX, json_schema_extra=list_map("name"),
                                     description="Extra environment variables.")


class AutoscalingSpec(ApiModel):
    """The built-in autoscaler. Disable it to let an HPA or KEDA drive the scale subresource."""

    cel_rules: ClassVar = (
        cel("self.maxScaleUpStep >= 1", "maxScaleUpStep must be at least 1", ".maxScaleUpStep"),
    )

    enabled: bool = Field(True, description="Run the built-in autoscaler for this pool.")
    signal: Literal["promptBacklog", "trajectoryBacklog", "trainerIdle"] = Field(
        "promptBacklog",
        description="What drives the replica count: pending prompts per replica, "
                    "trajectories waiting for the trainer, or trainer idle time."
    )
    target: float = Field(4.0, gt=0.0, le=1_000_000.0,
                          description="Target value of the signal per replica (prompt "
                                      "groups, trajectories, or idle fraction x100).")
    interval_seconds: int = Field(15, ge=1, le=3600, description="How often the autoscaler evaluates.")
    cooldown_seconds: int = Field(60, ge=0, le=86400, description="Minimum time between two scaling actions.")
    max_scale_up_step: int = Field(4, ge=1, le=1024, description="Most replicas added in one action.")
    max_scale_down_percent: int = Field(25, ge=1, le=100,
                                        description="Most replicas removed in one action, as a percentage of the "
                                                    "current count (at least one).")


class RolloutPoolSpec(ApiModel):
    """Desired state of a RolloutPool."""

    cel_rules: ClassVar = (
        cel("self.minReplicas <= self.maxReplicas", "minReplicas must be less than or equal to maxReplicas",
            ".minReplicas"),
    )

    engine: EngineSpec = Field(default_factory=EngineSpec, description="Inference engine settings.")
    agent: AgentSpec = Field(default_factory=AgentSpec, description="Rollout agent settings.")
    replicas: int = Field(1, ge=0, le=4096,
                          description="Desired rollout pods; the scale subresource and the autoscaler write it.")
    min_replicas: int = Field(1, ge=0, le=4096, description="Lower bound the autoscaler keeps.")
    max_replicas: int = Field(8, ge=1, le=4096, description="Upper bound the autoscaler keeps.")
    gpus_per_replica: int = Field(1, ge=0, le=64,
                                  description="nvidia.com/gpu requested by each rollout pod (0 for CPU engines).")
    resources: ResourceRequirements | None = Field(None, description="Engine container resources beyond the GPUs.")
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec, description="Autoscaler policy.")
    placement: Placement | None = Field(None, description="Node pool, tolerations and priority of rollout pods.")


class RolloutPoolStatus(ApiModel):
    """Observed state of a RolloutPool."""

    replicas: int = Field(0, ge=0, description="Rollout pods that exist.")
    ready_replicas: int = Field(0, ge=0, description="Rollout pods whose engine answers health checks.")
    desired_replicas: int | None = Field(None, ge=0, description="What the autoscaler last asked for.")
    selector: str | None = Field(None, max_length=SHORT_STRING_MAX,
                                 description="Label selector of the pool's pods (for HPA via the scale subresource).")
    bound_job: str | None = Field(None, max_length=SHORT_STRING_MAX,
                                  description="The RLJob this pool currently serves.")
    policy_versions: list[int] | None = Field(None, max_length=4096,
                                              description="Policy versions loaded by the ready pods.")
    last_scale_time: str | None = Field(None, description="When the autoscaler last changed replicas (RFC 3339).")
    observed_generation: int | None = Field(None, ge=0, description="The .metadata.generation the status reflects.")
    conditions: list[Condition] | None = Field(None, max_length=LIST_MAX, json_schema_extra=list_map("type"),
                                               description=f"{READY}: an engine pod is ready, or none is wanted.")


class RolloutPool(ApiModel):
    """An autoscaled pool of rollout engines that RLJobs generate with."""

    cel_rules: ClassVar = (dns_label_rule("RolloutPool", "its Service's name", 63),)

    kind_info: ClassVar = {
        "kind": "RolloutPool",
        "plural": "rolloutpools",
        "singular": "rolloutpool",
        "short_names": ["rp", "rpool"],
    }

    api_version: Literal[API_VERSION] = Field(API_VERSION, description=API_VERSION)
    kind: Literal["RolloutPool"] = Field("RolloutPool", description="RolloutPool")
    metadata: dict = Field(default_factory=dict, description="Standard object metadata.")
    spec: RolloutPoolSpec = Field(default_factory=RolloutPoolSpec, description="Desired state.")
    status: RolloutPoolStatus | None = Field(None, description="Observed state, written by the operator.")
