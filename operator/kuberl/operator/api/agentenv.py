"""AgentEnv: the tool / code-execution / verifier service that rollout agents talk to during episodes."""

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


class LatencySpec(ApiModel):
    """Injected episode latency (reference server only), to exercise the decoupled mode."""

    distribution: Literal["none", "lognormal", "pareto"] = Field("none",
                                                                 description="Shape of the injected per-step delay.")
    median_seconds: float = Field(0.0, ge=0.0, le=3600.0, description="Median injected delay per environment step.")
    tail: float = Field(1.0, gt=0.0, le=10.0,
                        description="Heaviness of the tail: lognormal sigma, or the inverse of the Pareto shape.")


class SandboxSpec(ApiModel):
    """Isolation of environment pods: agents run model-written code in them."""

    deny_egress: bool = Field(True,
                              description="Create a NetworkPolicy that denies all egress from the environment pods.")
    run_as_non_root: bool = Field(True, description="Require a non-root user.")
    read_only_root_filesystem: bool = Field(True,
                                            description="Mount the root filesystem read-only (a "
                                                        "writable /tmp is provided).")
    runtime_class_name: str | None = Field(None, max_length=SHORT_STRING_MAX,
                                           description="RuntimeClass for stronger isolation, e.g. gvisor or kata.")


class AgentEnvSpec(ApiModel):
    """Desired state of an AgentEnv."""

    cel_rules: ClassVar = (
        cel("self.task != 'custom' || has(self.image)",
            "task custom serves your own server: set image (and command/args if its entrypoint needs them)", ".image"),
    )

    image: str | None = Field(None, max_length=SHORT_STRING_MAX,
                              description="Environment server image; defaults to the kuberl reference server.")
    command: list[str] | None = Field(None, max_length=LIST_MAX, description="Entrypoint override.")
    args: list[str] | None = Field(None, max_length=LIST_MAX, description="Arguments to the entrypoint.")
    env: list[EnvVar] | None = Field(None, max_length=LIST_MAX, json_schema_extra=list_map("name"),
                                     description="Extra environment variables.")
    task: Literal["arithmetic", "calculator-tool", "custom"] = Field(
        "arithmetic",
        description="Reference task served: arithmetic (single-turn verifier), "
                    "calculator-tool (multi-turn tool use), or custom (your image).",
    )
    port: int = Field(8080, ge=1, le=65535, description="Port the environment server listens on.")
    replicas: int = Field(1, ge=0, le=4096,
                          description="Environment pods. The server speaks kuberl's HTTP episode protocol "
                                      "(kuberl-episode-v1: reset/step).")
    concurrency_per_replica: int = Field(32, ge=1, le=65536,
                                         description="Episodes one pod serves at the same "
                                                     "time; more are refused with 429.")
    episode_timeout_seconds: int = Field(300, ge=1, le=86400,
                                         description="An episode that runs longer is ended and scored as failed.")
    latency: LatencySpec | None = Field(None, description="Injected latency for experiments.")
    resources: ResourceRequirements | None = Field(None, description="Container resources.")
    sandbox: SandboxSpec = Field(default_factory=SandboxSpec, description="Isolation settings applied to the pod spec.")
    placement: Placement | None = Field(None, description="Where the pods run.")


class AgentEnvStatus(ApiModel):
    """Observed state of an AgentEnv."""

    replicas: int = Field(0, ge=0, description="Pods that exist.")
    ready_replicas: int = Field(0, ge=0, description="Pods that pass readiness.")
    endpoint: str | None = Field(None, max_length=SHORT_STRING_MAX,
                                 description="In-cluster URL of the environment Service.")
    observed_generation: int | None = Field(None, ge=0, description="The .metadata.generation the status reflects.")
    conditions: list[Condition] | None = Field(None, max_length=LIST_MAX, json_schema_extra=list_map("type"),
                                               description=f"{READY}: an environment server pod is ready, or none is "
                                                           f"wanted.")


class AgentEnv(ApiModel):
    """An environment service that rollout agents run multi-turn episodes against."""

    cel_rules: ClassVar = (dns_label_rule("AgentEnv", "the name of its Service and NetworkPolicies", 50),)

    kind_info: ClassVar = {
        "kind": "AgentEnv",
        "plural": "agentenvs",
        "singular": "agentenv",
        "short_names": ["ae", "aenv"],
    }

    api_version: Literal[API_VERSION] = Field(API_VERSION, description=API_VERSION)
    kind: Literal["AgentEnv"] = Field("AgentEnv", description="AgentEnv")
    metadata: dict = Field(default_factory=dict, description="Standard object metadata.")
    spec: AgentEnvSpec = Field(default_factory=AgentEnvSpec, description="Desired state.")
    status: AgentEnvStatus | None = Field(None, description="Observed state, written by the operator.")
