"""Malformed manifests and what rejects them.

Each case starts from a valid example in examples/ and breaks one thing. `expect` is the
field path the error must name (the API server and `kuberl validate` both print it);
`message` is the human text of the CEL rule, for cases a CEL rule catches.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


@dataclass(frozen=True)
class Case:
    id: str
    manifest: dict[str, Any]
    expect: str
    message: str | None = None


def _set(base: str, path: str, value: Any) -> dict[str, Any]:
    """`base` example with the dotted `path` set to `value` (None deletes it)."""
    doc = copy.deepcopy(example(base))
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if value is None:
        del node[int(leaf) if isinstance(node, list) else leaf]
    elif isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value
    return doc


def _edit(base: str, fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(example(base))
    fn(doc)
    return doc


JOB = "tiny-cpu.yaml"
COLO = "colocated-math.yaml"
AGENTIC = "decoupled-agentic.yaml"
POOL = "shared-rolloutpool.yaml"
ENV = "agentenv-calculator.yaml"

MALFORMED_CASES: list[Case] = [
    # wrong types
    Case("group-size-string", _set(JOB, "spec.algorithm.groupSize", "eight"), "spec.algorithm.groupSize"),
    Case("lr-string", _set(JOB, "spec.algorithm.learningRate", "fast"), "spec.algorithm.learningRate"),
    Case("datasets-not-list", _set(JOB, "spec.datasets", {"name": "sums"}), "spec.datasets"),
    Case("suspend-string", _set(JOB, "spec.suspend", "yes"), "spec.suspend"),
    Case("pool-replicas-string", _set(POOL, "spec.replicas", "two"), "spec.replicas"),
    Case("env-port-string", _set(ENV, "spec.port", "http"), "spec.port"),
    # unknown enum values
    Case("mode-unknown", _set(JOB, "spec.mode", "synchronous"), "spec.mode"),
    Case("loss-aggregation-unknown", _set(JOB, "spec.algorithm.lossAggregation", "batch"),
         "spec.algorithm.lossAggregation"),
    Case("backend-unknown", _set(JOB, "spec.trainer.backend", "deepspeed"), "spec.trainer.backend"),
    Case("reward-type-unknown", _set(JOB, "spec.reward.type", "human"), "spec.reward.type"),
    Case("verifier-unknown", _set(JOB, "spec.reward.verifier.name", "vibes"), "spec.reward.verifier.name"),
    Case("engine-type-unknown", _set(POOL, "spec.engine.type", "vllm"), "spec.engine.type"),
    Case("autoscaling-signal-unknown", _set(POOL, "spec.autoscaling.signal", "cpu"), "spec.autoscaling.signal"),
    Case("toleration-effect-unknown", _set(POOL, "spec.placement.tolerations.0.effect", "Maybe"),
         "spec.placement.tolerations[0].effect"),
    Case("env-task-unknown", _set(ENV, "spec.task", "chess"), "spec.task"),
    # out-of-range numbers
    Case("group-size-one", _set(JOB, "spec.algorithm.groupSize", 1), "spec.algorithm.groupSize"),
    Case("lr-zero", _set(JOB, "spec.algorithm.learningRate", 0), "spec.algorithm.learningRate"),
    Case("temperature-negative", _set(JOB, "spec.algorithm.temperature", -0.5), "spec.algorithm.temperature"),
    Case("top-p-above-one", _set(JOB, "spec.algorithm.topP", 1.5), "spec.algorithm.topP"),
    Case("max-off-policy-too-large", _set(AGENTIC, "spec.maxOffPolicySteps", 1000), "spec.maxOffPolicySteps"),
    Case("trainer-replicas-zero", _set(JOB, "spec.trainer.replicas", 0), "spec.trainer.replicas"),
    Case("mem-fraction-above-one", _set(POOL, "spec.engine.memFractionStatic", 1.2), "spec.engine.memFractionStatic"),
    Case("scale-down-percent-zero", _set(POOL, "spec.autoscaling.maxScaleDownPercent", 0),
         "spec.autoscaling.maxScaleDownPercent"),
    Case("env-port-too-large", _set(ENV, "spec.port", 70000), "spec.port"),
    Case("pass-rate-above-one", _set(COLO, "spec.curriculum.stages.0.until.passRate", 1.5),
         "spec.curriculum.stages[0].until.passRate"),
    # missing required fields
    Case("missing-model", _set(JOB, "spec.model", None), "spec.model"),
    Case("missing-weight-store", _set(JOB, "spec.weightStore", None), "spec.weightStore"),
    Case("missing-dataset-source", _set(JOB, "spec.datasets.0.source", None), "spec.datasets[0].source"),
    Case("empty-datasets", _set(JOB, "spec.datasets", []), "spec.datasets"),
    # malformed strings
    Case("bucket-uppercase", _set(JOB, "spec.weightStore.bucket", "My_Bucket"), "spec.weightStore.bucket"),
    Case("dataset-name-not-dns", _set(JOB, "spec.datasets.0.name", "Sums_2"), "spec.datasets[0].name"),
    Case("python-entry-point-malformed",
         _edit(JOB, lambda d: d["spec"].update(reward={"type": "python", "python": {"entryPoint": "not a module"}})),
         "spec.reward.python.entryPoint"),
    # unknown fields
    Case("unknown-algorithm-field", _set(JOB, "spec.algorithm.learningRateSchedule", "cosine"),
         "spec.algorithm.learningRateSchedule"),
    # contradictory fields (CEL)
    Case("clip-low-above-high", _edit(JOB, lambda d: d["spec"]["algorithm"].update(clipEpsLow=0.4, clipEpsHigh=0.2)),
         "spec.algorithm.clipEpsLow", "clipEpsLow must be less than or equal to clipEpsHigh"),
    Case("batch-not-multiple-of-group", _set(JOB, "spec.algorithm.globalBatchSize", 60),
         "spec.algorithm.globalBatchSize", "multiple of groupSize"),
    Case("colocated-with-pool", _set(COLO, "spec.rollout", {"poolRef": "shared-sglang"}), "spec.rollout",
         "colocated mode trains and generates on the same GPUs"),
    Case("colocated-off-policy", _set(COLO, "spec.maxOffPolicySteps", 2), "spec.maxOffPolicySteps",
         "colocated mode is on-policy"),
    Case("pool-ref-and-template", _set(AGENTIC, "spec.rollout.template", {"replicas": 1}), "spec.rollout.poolRef",
         "set at most one of poolRef and template"),
    Case("reward-agentenv-unknown", _set(AGENTIC, "spec.reward.agentEnv", "sandbox"), "spec.reward.agentEnv",
         "reward.agentEnv must name an entry of spec.agentEnvs"),
    Case("reward-verifier-missing", _edit(JOB, lambda d: d["spec"]["reward"].pop("verifier")), "spec.reward.verifier",
         "type verifier needs the verifier field"),
    Case("stage-unknown-dataset", _set(COLO, "spec.curriculum.stages.0.datasets", ["math-easy"]), "spec.curriculum",
         "curriculum stages may only name datasets listed in spec.datasets"),
    Case("stage-without-until", _set(COLO, "spec.curriculum.stages.0.until", None), "spec.curriculum.stages",
         "every stage but the last needs an until condition"),
    Case("stage-switch-both", _set(COLO, "spec.curriculum.stages.0.until", {"steps": 10, "passRate": 0.5}),
         "spec.curriculum.stages[0].until", "set exactly one of steps or passRate"),
    Case("tp-does-not-divide-ranks", _set(COLO, "spec.trainer.parallelism.tensor", 3), "spec.trainer.parallelism",
         "must divide the number of trainer ranks"),
    Case("hub-cache-subpath-escapes",
         _set(COLO, "spec.model.hubCache", {"claimName": "hf-models", "subPath": "hub/../../etc"}),
         "spec.model.hubCache.subPath", "should match"),
    Case("megatron-context-parallel", _set(COLO, "spec.trainer.parallelism.context", 2), "spec.trainer.parallelism",
         "the megatron trainer runs tensor, pipeline and data parallel"),
    Case("megatron-entropy-bonus", _set(COLO, "spec.algorithm.entropyCoef", 0.01), "spec.algorithm.entropyCoef",
         "the megatron trainer computes no entropies"),
    Case("colocated-engine-in-decoupled-mode", _set(JOB, "spec.trainer.colocatedEngine", "sglang"),
         "spec.trainer.colocatedEngine", "trainer.colocatedEngine is the colocated mode's engine"),
    Case("torch-backend-multi-replica", _set(JOB, "spec.trainer.replicas", 2), "spec.trainer.replicas",
         "the torch backend is single-replica"),
    Case("pool-min-above-max", _edit(POOL, lambda d: d["spec"].update(minReplicas=10, maxReplicas=4)),
         "spec.minReplicas", "minReplicas must be less than or equal to maxReplicas"),
    Case("env-custom-task-without-image", _set(ENV, "spec.task", "custom"), "spec.image",
         "task custom serves your own server: set image"),
    # Fields that do nothing yet are refused with a message saying so (docs/fields.md).
    Case("rollout-batch-not-whole-steps", _set(JOB, "spec.algorithm.rolloutBatchSize", 192),
         "spec.algorithm.rolloutBatchSize", "rolloutBatchSize must be a multiple of globalBatchSize"),
    Case("micro-batch-above-mini-batch", _set(JOB, "spec.algorithm.microBatchSize", 1024),
         "spec.algorithm.microBatchSize", "microBatchSize must not exceed globalBatchSize"),
    Case("mask-band-low-at-one", _set(JOB, "spec.algorithm.offPolicyCorrection",
                                      {"low": 1.0, "high": 1.0, "method": "mask"}),
         "spec.algorithm.offPolicyCorrection.low", "low must be below 1"),
    Case("wandb-online-without-key", _set(JOB, "spec.observability", {"wandb": {"project": "p"}}),
         "spec.observability.wandb.apiKeySecret", "mode online needs apiKeySecret"),
    Case("wandb-key-secret-bad-name",
         _set(JOB, "spec.observability", {"wandb": {"project": "p", "apiKeySecret": {"name": "Bad_Name"}}}),
         "spec.observability.wandb.apiKeySecret.name"),
    Case("nucleus-sampling", _set(JOB, "spec.algorithm.topP", 0.9), "spec.algorithm.topP",
         "topP < 1 (nucleus sampling) is not implemented"),
    Case("buffer-url-with-password", _set(JOB, "spec.buffer.url", "nats://kuberl:hunter2@nats.kuberl-system:4222"),
         "spec.buffer.url", "without user or password in it"),
    Case("buffer-url-not-nats", _set(JOB, "spec.buffer.url", "http://nats.kuberl-system:4222"), "spec.buffer.url",
         "must be nats://host:port or tls://host:port"),
    Case("weight-store-endpoint-with-keys", _set(JOB, "spec.weightStore.endpoint", "http://AKIA:secret@s3.local:8333"),
         "spec.weightStore.endpoint", "without user or password in it"),
    Case("buffer-credentials-bad-name", _set(JOB, "spec.buffer.credentialsSecret", {"name": "NATS_creds"}),
         "spec.buffer.credentialsSecret.name"),
    Case("env-value-and-value-from", _set(JOB, "spec.trainer.env", [{"name": "TOKEN", "value": "x",
                                                                     "valueFrom": {"secretKeyRef": {"name": "s",
                                                                                                    "key": "k"}}}]),
         "spec.trainer.env[0].valueFrom", "set value or valueFrom, not both"),
    Case("env-value-from-two-sources",
         _set(JOB, "spec.trainer.env", [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"},
                                                                        "configMapKeyRef": {"name": "c",
                                                                                            "key": "k"}}}]),
         "spec.trainer.env[0].valueFrom", "set exactly one of secretKeyRef and configMapKeyRef"),
    Case("env-name-with-space", _set(JOB, "spec.trainer.env", [{"name": "MY VAR", "value": "x"}]),
         "spec.trainer.env[0].name"),
    Case("job-name-with-dots", _edit(JOB, lambda d: d["metadata"].update(name="my.job.v1")), "metadata.name",
         "metadata.name must be a DNS-1035 label"),
    Case("job-name-starts-with-digit", _edit(JOB, lambda d: d["metadata"].update(name="1job")), "metadata.name",
         "metadata.name must be a DNS-1035 label"),
    Case("pool-name-with-dots", _edit(POOL, lambda d: d["metadata"].update(name="pool.v2")), "metadata.name",
         "metadata.name must be a DNS-1035 label"),
    Case("env-name-too-long", _edit(ENV, lambda d: d["metadata"].update(name="e" * 51)), "metadata.name",
         "at most 50 characters"),
    Case("torch-backend-bf16", _set(JOB, "spec.model.dtype", "bfloat16"), "spec.model.dtype",
         "the torch backend trains in float32"),
    Case("job-name-too-long",
         _edit(JOB, lambda d: d["metadata"].update(name="a-very-long-rljob-name-that-no-pod-name-can-hold")),
         "metadata.name", "metadata.name must be at most 40 characters"),
]
