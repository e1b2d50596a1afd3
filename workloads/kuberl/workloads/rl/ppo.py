"""One rollout batch → its optimizer steps: the PPO/GRPO update both trainer backends share.

Semantics as in the reference systems (PPO; slime's and veRL's GRPO):

1. the proximal ("old") logprobs of every sample, and the reference logprobs when a KL
   term is on, are computed once, with the weights the batch was handed to, before any
   update;
2. the batch is cut into mini-batches of ``globalBatchSize`` samples, one optimizer step
   each, and passed over ``epochs`` times — from the second step on the ratio π/π_old moves
   and the clip acts;
3. a mini-batch that does not fit is run as micro-batches of ``microBatchSize`` with
   gradient accumulation, every micro-batch's loss normalised by the token (or sequence)
   count of the whole mini-batch summed over data-parallel ranks, so any split gives the
   gradient of the one-batch mean.

A backend (the tiny torch model, megatron-core) only supplies forward passes, a
forward+backward, and the optimizer step (:class:`PolicyBackend`).
"""

from __future__ import annotations

import math

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from kuberl.workloads.rl.losses import aggregate, loss_denominator, policy_loss
from kuberl.workloads.spec import AlgorithmSpec

LossFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""(per-token logprobs [B, T], per-token entropies [B, T] or None) → the micro-batch's loss."""


class PolicyBackend(Protocol):
    """What the update needs from a trainable policy. Per-token tensors are [B, T] aligned
    with the input ids; position 0 (no prediction) holds 0."""

    def logprobs(self, ids: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
        """Per-token logprobs under the current weights, without gradient."""

    def forward_backward(self, ids: torch.Tensor, valid: torch.Tensor, temperature: float, loss_fn: LossFn) -> None:
        """Forward, ``loss_fn``, backward; gradients accumulate until ``optimizer_step``."""

    def zero_grad(self) -> None: ...

    def optimizer_step(self) -> float:
        """Sum gradients over data-parallel ranks, clip by the global norm, step; returns the norm."""

    def dp_sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the data-parallel ranks (itself on one rank)."""

    def dp_max(self, value: torch.Tensor) -> torch.Tensor:
        """``value``'s elementwise maximum over the data-parallel ranks (itself on one rank)."""


@dataclass
class RolloutBatch:
    """One rollout batch, collated: [B, T] token tensors and [B] per-sample values."""

    ids: torch.Tensor
    valid: torch.Tensor
    mask: torch.Tensor
    behaviour: torch.Tensor
    advantages: torch.Tensor
    weights: torch.Tensor
    rewards: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def rows(self, index: slice | torch.Tensor) -> RolloutBatch:
        return RolloutBatch(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


@dataclass
class StepResult:
    """One optimizer step of an update: where it was in the batch, and what it measured."""

    epoch: int
    mini_batch: int
    samples: slice
    metrics: dict[str, float]


TOKEN_MEANS = {"entropy": "entropy", "kl": "kl", "is_weight": "is_weight_mean", "is_masked": "is_masked_frac"}
"""Per-token sums of the loss → the names of their token means in the step's metrics."""


def spans(n: int, size: int | None) -> list[slice]:
    size = n if not size else size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def data_parallel_share(mini_batch: slice, dp: int, dp_rank: int) -> list[int]:
    """The rows of a mini-batch that data-parallel rank ``dp_rank`` of ``dp`` trains: every
    ``dp``-th. Shares differ by at most one row (the loss is normalised by the whole
    mini-batch's token count, so uneven shares change nothing), and may be empty."""
    return list(range(mini_batch.start + dp_rank, mini_batch.stop, dp))


def _no_grad_logprobs(backend: PolicyBackend, batch: RolloutBatch, micro: int | None,
                      temperature: float) -> torch.Tensor:
    parts = [backend.logprobs(batch.ids[s], batch.valid[s], temperature) for s in spans(len(batch), micro)]
    return torch.cat(parts).detach() if parts else batch.behaviour.clone()


def ppo_update(backend: PolicyBackend, batch: RolloutBatch, algo: AlgorithmSpec, *,
               reference: PolicyBackend | None = None, max_steps: int | None = None,
               local_rows: Callable[[slice], list[int]] | None = None) -> Iterator[StepResult]:
    """The optimizer steps of one rollout batch (see the module docstring), yielded one by
    one after each step; at most ``max_steps`` of them.

    Under data parallelism every rank holds the whole batch and calls this; ``local_rows``
    picks the rows of each mini-batch this rank runs forward/backward on
    (`data_parallel_share`), and ``backend.dp_sum`` / ``optimizer_step`` combine the ranks.
    Step metrics, the ratio extremes included, are over the whole mini-batch."""
    kl_on = algo.kl_coef > 0
    if kl_on and reference is None:
        raise ValueError("algorithm.klCoef > 0 needs a reference policy")
    micro = algo.micro_batch_size
    old = _no_grad_logprobs(backend, batch, micro, algo.temperature)
    ref = _no_grad_logprobs(reference, batch, micro, algo.temperature) if kl_on else None
    corr = algo.off_policy_correction
    done = 0
    for epoch in range(algo.epochs):
        for index, mb in enumerate(spans(len(batch), algo.global_batch_size)):
            if max_steps is not None and done >= max_steps:
                return
            rows = list(range(mb.start, mb.stop)) if local_rows is None else local_rows(mb)
            yield StepResult(epoch, index, mb, _step(backend, batch, mb, rows, old, ref, algo, corr, micro))
            done += 1


def _step(backend, batch, mb, mine, old, ref, algo, corr, micro) -> dict[str, float]:
    mask = batch.mask[mb]
    # One global count for the whole optimizer batch, over every micro-batch and rank.
    denom = backend.dp_sum(loss_denominator(batch.mask[mine], algo.loss_aggregation).reshape(1)).squeeze(0)
    sums: dict[str, float] = {}
    extremes: dict[str, list[float]] = {"ratio_max": [], "ratio_min": []}
    loss_total = torch.zeros((), dtype=torch.float64)
    backend.zero_grad()
    for part in spans(len(mine), micro):
        rows = torch.tensor(mine[part], dtype=torch.long)
        b = batch.rows(rows)

        def loss_fn(logp: torch.Tensor, entropy: torch.Tensor | None, b=b, rows=rows) -> torch.Tensor:
            out = policy_loss(
                logp, b.advantages, b.mask, old_logprobs=old[rows], behaviour_logprobs=b.behaviour,
                eps_low=algo.clip_eps_low, eps_high=algo.clip_eps_high, aggregation=algo.loss_aggregation,
                correction=corr.method, correction_low=corr.low, correction_high=corr.high,
                ref_logprobs=None if ref is None else ref[rows], kl_coef=algo.kl_coef, kl_estimator=algo.kl_estimator,
                sample_weights=b.weights, denominator=denom,
            )
            loss = out.loss
            if algo.entropy_coef:
                if entropy is None:
                    raise ValueError("algorithm.entropyCoef > 0: this trainer backend does not compute entropies")
                loss = loss - algo.entropy_coef * aggregate(entropy, b.mask, algo.loss_aggregation, denom)
            if entropy is not None:
                out.sums["entropy"] = float((entropy.detach() * b.mask).sum())
            for key in extremes:
                if key in out.sums:
                    extremes[key].append(out.sums.pop(key))
            for key, value in out.sums.items():
                sums[key] = sums.get(key, 0.0) + value
            nonlocal loss_total
            loss_total = loss_total + loss.detach().double()
            return loss

        backend.forward_backward(b.ids, b.valid, algo.temperature, loss_fn)
    grad_norm = backend.optimizer_step()
    keys = sorted(sums)
    totals = backend.dp_sum(torch.tensor([loss_total.item(), *(sums[k] for k in keys)], dtype=torch.float64))
    loss_value, summed = float(totals[0]), dict(zip(keys, totals[1:].tolist(), strict=True))
    tokens = max(summed.pop("tokens", 0.0), 1.0)
    m = mask.to(torch.float64)
    metrics = {
        "loss": loss_value,
        "grad_norm": float(grad_norm),
        "clip_frac": summed.pop("clipped", 0.0) / tokens,
        "ratio_mean": summed.pop("ratio", tokens) / tokens,
        "ratio_dev_mean": summed.pop("ratio_dev", 0.0) / tokens,
        # |old − behaviour|: how far the engine's logprobs are from the trainer's (staleness, numerics).
        "behaviour_gap": float(
            ((old[mb] - batch.behaviour[mb].detach()).abs().double() * m).sum() / m.sum().clamp(min=1)
        ),
        "weight_mean": float(batch.weights[mb].double().mean()) if mb.stop > mb.start else 1.0,
        **{TOKEN_MEANS[k]: v / tokens for k, v in summed.items()},
    }
    # Extremes over every rank's share (a rank with no valid token contributes −inf); every
    # rank makes the call, so none waits on a collective another skipped.
    local = [max(extremes["ratio_max"], default=-math.inf), -min(extremes["ratio_min"], default=math.inf)]
    high, neg_low = backend.dp_max(torch.tensor(local, dtype=torch.float64)).tolist()
    if math.isfinite(high):
        metrics["ratio_max"], metrics["ratio_min"] = high, -neg_low
    return metrics
