"""How a job learns: the RL algorithm, staleness handling, off-policy correction and evaluation."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from kuberl.workloads.spec.base import LIST_MAX, ApiModel, cel, list_map
from kuberl.workloads.spec.data import Dataset


class StalenessHandling(ApiModel):
    """What happens to a sample generated more than maxOffPolicySteps versions before the trainer."""

    policy: Literal["drop",
                    "downweight"] = Field("drop",
                                          description="drop: the sample is not trained on (its prompt is "
                                                      "re-issued); downweight: its loss is multiplied by "
                                                      "decay^(lag − maxOffPolicySteps).")
    decay: float = Field(0.5, gt=0.0, lt=1.0, description="downweight: factor per version beyond maxOffPolicySteps.")
    min_weight: float = Field(0.05, gt=0.0, le=1.0,
                              description="downweight: samples whose weight would fall below this are dropped.")


class OffPolicyCorrection(ApiModel):
    """Correction of samples whose behaviour policy (an older version, or an engine with other
    numerics such as FP8) differs from the trainer's proximal policy."""

    cel_rules: ClassVar = (
        cel("self.low <= self.high", "low must be less than or equal to high", ".low"),
        cel("self.method != 'mask' || self.low < 1.0",
            "method mask keeps tokens whose ratio is in [low, high]: low must be below 1", ".low"),
    )

    method: Literal["truncate", "mask", "none"] = Field(
        "truncate",
        description="truncate: weight each token by its ratio pi_old/pi_behaviour clamped to [low, high] (truncated "
                    "IS); "
                    "mask: tokens whose ratio leaves [low, high] get no gradient, the others their ratio (IcePop / "
                    "masked IS); none: no correction.",
    )
    low: float = Field(0.0, ge=0.0, le=1.0, description="Lower bound of the ratio (truncate: clamp; mask: band edge).")
    high: float = Field(2.0, ge=1.0, le=100.0,
                        description="Upper bound of the ratio (truncate: clamp; mask: band edge).")
    staleness: StalenessHandling = Field(default_factory=StalenessHandling,
                                         description="Samples older than maxOffPolicySteps versions (decoupled mode).")


class EvaluationSpec(ApiModel):
    """Held-out evaluation on the current policy: greedy and sampled."""

    datasets: list[Dataset] = Field(min_length=1, max_length=LIST_MAX, json_schema_extra=list_map("name"),
                                    description="Held-out prompt datasets (not trained on), "
                                                "scored with the job's reward.")
    interval_steps: int = Field(50, ge=1, le=10_000_000,
                                description="Evaluate every N optimizer steps, and after the last.")
    samples_per_prompt: int = Field(4, ge=1, le=1024,
                                    description="Sampled responses per prompt (temperature of the job): pass@1 is "
                                                "their mean, pass@k the chance one of k passes.")
    max_prompts: int = Field(64, ge=1, le=100_000,
                             description="Prompts per dataset per evaluation (the first ones "
                                         "of the dataset, the same every time).")


class AlgorithmSpec(ApiModel):
    """The policy-gradient algorithm (GRPO family)."""

    cel_rules: ClassVar = (
        # Accepted by the schema, not yet by the trainer: refused rather than ignored.
        cel("self.topP == 1.0", "topP < 1 (nucleus sampling) is not implemented by the engines yet: set 1.0", ".topP"),
        cel("self.clipEpsLow <= self.clipEpsHigh", "clipEpsLow must be less than or equal to clipEpsHigh",
            ".clipEpsLow"),
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
            "rolloutBatchSize must be a multiple of globalBatchSize: each rollout batch is cut into "
            "rolloutBatchSize/globalBatchSize optimizer steps",
            ".rolloutBatchSize",
        ),
        cel(
            "!has(self.microBatchSize) || self.microBatchSize <= self.globalBatchSize",
            "microBatchSize must not exceed globalBatchSize",
            ".microBatchSize",
        ),
    )

    group_size: int = Field(8, ge=2, le=1024,
                            description="Responses sampled per prompt; advantages are normalised within each group.")
    loss_aggregation: Literal["token",
                              "sequence"] = Field("token",
                                                  description="token: mean over all valid tokens of the batch; "
                                                              "sequence: mean of per-sequence means.")
    clip_eps_low: float = Field(0.2, ge=0.0, le=1.0, description="Lower clip epsilon of the probability ratio.")
    clip_eps_high: float = Field(0.28, ge=0.0, le=10.0,
                                 description="Upper clip epsilon (clip-higher keeps exploration alive).")
    kl_coef: float = Field(0.0, ge=0.0, le=10.0,
                           description="Weight of the KL penalty to the reference policy (the initial policy, kept "
                                       "frozen) in the loss; 0 disables it and the reference model.")
    kl_estimator: Literal["k1", "k2",
                          "k3"] = Field("k3",
                                        description="Per-token KL estimator: k3 = exp(d)-d-1 (unbiased, non-negative), "
                                                    "k2 = d^2/2, k1 = -d, with d = log pi_ref - log pi.")
    advantage_scaling: Literal["groupStd", "none"] = Field(
        "groupStd",
        description="groupStd: (r - group mean) / (unbiased group std + 1e-6), as GRPO; none: r - group mean (Dr. "
                    "GRPO: no up-weighting of nearly solved or nearly failed groups). "
                    "Groups whose rewards differ by at most 1e-6 get exactly 0.",
    )
    entropy_coef: float = Field(0.0, ge=0.0, le=1.0, description="Entropy bonus weight.")
    learning_rate: float = Field(1e-6, gt=0.0, le=1.0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0.0, le=1000.0, description="Global gradient-norm clip.")
    global_batch_size: int = Field(256, ge=2, le=1_048_576,
                                   description="Samples (responses) per optimizer step (a mini-batch).")
    rollout_batch_size: int = Field(256, ge=2, le=1_048_576,
                                    description="Samples per rollout batch: generated per round (colocated) or "
                                                "taken from the buffer (decoupled); its proximal logprobs are "
                                                "computed once, then it is trained as "
                                                "rolloutBatchSize/globalBatchSize optimizer steps, epochs times.")
    epochs: int = Field(1, ge=1, le=64, description="Passes over each rollout batch.")
    micro_batch_size: int | None = Field(None, ge=1, le=1_048_576,
                                         description="Samples per forward/backward with gradient accumulation; unset "
                                                     "runs the whole mini-batch at once. Does not change the result.")
    max_prompt_length: int = Field(1024, ge=1, le=1_048_576, description="Prompts longer than this are skipped.")
    max_response_length: int = Field(4096, ge=1, le=1_048_576,
                                     description="Response length cap (single-stage long-context RL: just raise it).")
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    dynamic_sampling: bool = Field(False, description="Drop groups whose rewards are all equal (no learning signal).")
    over_sampling_factor: float = Field(1.0, ge=1.0, le=16.0,
                                        description="Generate this many times the needed groups so "
                                                    "dynamic sampling still fills the batch.")
    off_policy_correction: OffPolicyCorrection = Field(default_factory=OffPolicyCorrection,
                                                       description="Correction for samples produced by older policies.")
