"""Policy-gradient losses: clipped ratio, off-policy corrections, KL, aggregation. Pure.

A loss here is evaluated on one micro-batch but normalised by the counts of the whole
optimizer batch (``denominator``): the gradients of the micro-batches then add up to the
gradient of the batch mean, over any split and over data-parallel ranks. Metrics come
back as sums over the micro-batch's valid tokens, for the caller to divide by the same
global counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

Aggregation = Literal["token", "sequence"]
KLEstimator = Literal["k1", "k2", "k3"]
CorrectionMethod = Literal["none", "truncate", "mask"]


def loss_denominator(mask: torch.Tensor, mode: Aggregation) -> torch.Tensor:
    """What :func:`aggregate` divides by for the batch ``mask``: its valid tokens (``token``)
    or its sequences with at least one valid token (``sequence``). Sum it over micro-batches
    and ranks to normalise a split batch exactly like the whole."""
    m = mask.to(torch.float64)
    if mode == "token":
        return m.sum()
    if mode == "sequence":
        return (m.sum(-1) > 0).to(torch.float64).sum()
    raise ValueError(f"unknown loss aggregation {mode!r}")


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: Aggregation = "token",
              denominator: float | torch.Tensor | None = None) -> torch.Tensor:
    """Reduce per-token values [B, T] to a scalar.

    ``token``: sum over valid tokens / valid tokens of the batch (DAPO's token-level loss:
    every token weighs the same, so long responses count in proportion to their length).
    ``sequence``: each sequence's token mean, summed / sequences of the batch (GRPO's
    original sample-level loss). ``denominator`` is the batch's count when ``values`` is one
    micro-batch of it (see :func:`loss_denominator`).
    """
    m = mask.to(values.dtype)
    denom = loss_denominator(mask, mode) if denominator is None else denominator
    denom = torch.as_tensor(denom, dtype=values.dtype, device=values.device).clamp(min=1)
    if mode == "token":
        return (values * m).sum() / denom
    per_seq = (values * m).sum(-1) / m.sum(-1).clamp(min=1)
    return per_seq.sum() / denom


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from samples of π (Schulman, "Approximating KL divergence").

    With ``d = log π_ref − log π``: k1 = −d (unbiased, high variance, can be negative);
    k2 = d²/2 (biased, low variance); k3 = exp(d) − d − 1 (unbiased, ≥ 0, low variance).
    """
    d = ref_logprobs - logprobs
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return torch.exp(d) - d - 1
    raise ValueError(f"unknown KL estimator {estimator!r}")


def importance_weights(old_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, method: CorrectionMethod,
                       low: float, high: float) -> torch.Tensor:
    """Per-token weight of a sample's token for the gap between the policy that generated it
    (behaviour: an older version, or an engine with other numerics such as FP8) and the
    proximal policy the clipped ratio is taken against. Without gradient.

    ``truncate``: ``clamp(π_old/π_behaviour, low, high)`` (truncated IS; both bounds bound the
    variance). ``mask``: the ratio itself inside ``[low, high]`` and 0 outside (the token is
    dropped from the gradient, as IcePop and masked IS do: a token the two policies disagree
    on that much is noise, not signal). ``none``: 1.
    """
    if method == "none":
        return torch.ones_like(old_logprobs)
    ratio = torch.exp(old_logprobs - behaviour_logprobs).detach()
    if method == "truncate":
        return ratio.clamp(min=low, max=high)
    if method == "mask":
        return torch.where((ratio >= low) & (ratio <= high), ratio, torch.zeros_like(ratio))
    raise ValueError(f"unknown off-policy correction {method!r}")


@dataclass
class LossOutput:
    loss: torch.Tensor
    sums: dict[str, float] = field(default_factory=dict)  # over valid tokens; divide by the token count


def policy_loss(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor | None = None,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    aggregation: Aggregation = "token",
    correction: CorrectionMethod = "none",
    correction_low: float = 0.0,
    correction_high: float = 2.0,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    sample_weights: torch.Tensor | None = None,
    denominator: float | torch.Tensor | None = None,
) -> LossOutput:
    """The clipped policy-gradient loss (to minimise), for one micro-batch.

    Per token, with ``ratio = π/π_old``: ``−ratio·A`` where the ratio is inside its clip
    range for the sign of A, and the constant ``−clip(ratio)·A`` (no gradient) where it left
    it — the value of PPO's ``−min(ratio·A, clip(ratio)·A)``, written so that the two
    branches never tie: at ``clipEpsLow = 0`` and ratio 1 the min form split the gradient
    between a live and a dead branch and halved it. Then times the importance weight of
    ``correction`` (behaviour → old), plus ``kl_coef · KL`` to the reference (a token that
    ``mask`` drops loses both terms: no gradient at all), times the per-sample
    ``sample_weights`` (staleness), aggregated by :func:`aggregate`.

    ``old_logprobs`` are the proximal policy's: the trainer's, computed once per rollout
    batch before its first update, so the ratio moves (and the clip acts) from the second
    optimizer step of a batch on, and on any sample generated by an older version.
    """
    m = mask.to(logprobs.dtype)
    adv = advantages.to(logprobs.dtype)
    adv = adv if adv.dim() == logprobs.dim() else adv.unsqueeze(-1)
    ratio = torch.exp(logprobs - old_logprobs.detach())
    clipped_high = (ratio > 1 + eps_high) & (adv > 0)
    clipped_low = (ratio < 1 - eps_low) & (adv < 0)
    bound = ratio.detach().clamp(1 - eps_low, 1 + eps_high)
    per_token = -torch.where(clipped_high | clipped_low, bound * adv, ratio * adv)
    sums: dict[str, float] = {}
    if behaviour_logprobs is not None and correction != "none":
        w = importance_weights(old_logprobs.detach(), behaviour_logprobs, correction, correction_low, correction_high)
        per_token = per_token * w
        sums["is_weight"] = float((w * m).sum())
        sums["is_masked"] = float(((w == 0).to(m.dtype) * m).sum())
    if kl_coef:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs the reference policy's logprobs")
        kl = kl_penalty(logprobs, ref_logprobs.detach(), kl_estimator)
        per_token = per_token + kl_coef * kl
        sums["kl"] = float((kl.detach() * m).sum())
    if behaviour_logprobs is not None and correction == "mask":
        # A masked token is out of the loss altogether, its KL term included: the behaviour
        # policy's sample of it is not one the trainer's policy would make, so it says nothing
        # about π either. It still counts in the denominator (its share is 0, not excluded).
        per_token = torch.where(w == 0, torch.zeros_like(per_token), per_token)
    if sample_weights is not None:
        per_token = per_token * sample_weights.to(per_token.dtype).unsqueeze(-1)
    loss = aggregate(per_token, mask, aggregation, denominator)
    with torch.no_grad():
        r = ratio.detach()
        sums["clipped"] = float(((clipped_high | clipped_low).to(m.dtype) * m).sum())
        sums["ratio"] = float((r * m).sum())
        sums["ratio_dev"] = float(((r - 1).abs() * m).sum())
        sums["tokens"] = float(m.sum())
        valid = m.bool()
        if valid.any():
            sums["ratio_max"] = float(r[valid].max())
            sums["ratio_min"] = float(r[valid].min())
    return LossOutput(loss, sums)
