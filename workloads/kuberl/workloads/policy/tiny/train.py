"""The trainer's side of the tiny torch policy: initial weights, warm start, one RL step.

The warm start (``model.warmupSftSteps``) is a short supervised phase on the dataset's
prompts whose targets are the reference answer **plus uniform integer noise in ±4** (9
equally likely numbers, one of them right). It teaches the answer format (digits, then
end-of-sequence) and the rough size of the answer, but not the answer: the policy starts
near 1/9 ≈ 0.11 mean reward, with enough entropy left for RL to find the exact sums.
(Targets that ignore the prompt entirely make the model ignore its input, and RL then
collapses onto the most frequent answer; exact targets would leave nothing to learn.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

from kuberl.workloads.buffer.records import Trajectory
from kuberl.workloads.policy.tiny.model import (
    TinyQwen2ForCausalLM,
    causal_mask,
    load_pretrained,
    positions_of,
    seeded_model,
)
from kuberl.workloads.policy.tiny.tokenizer import CharTokenizer
from kuberl.workloads.rl.advantages import group_advantages
from kuberl.workloads.rl.losses import aggregate, policy_loss
from kuberl.workloads.spec import AlgorithmSpec, ModelSpec
from kuberl.workloads.tasks.datasets import Problem

WARMUP_NOISE = 4  # ± range of the warm-start target noise (see module docstring)
WARMUP_LR = 3e-3
WARMUP_BATCH = 64


def initial_model(spec: ModelSpec, seed: int = 0) -> TinyQwen2ForCausalLM:
    """The policy before any training: builtin://tiny (seeded init) or a local HF directory."""
    url = urlparse(spec.source)
    if url.scheme == "builtin":
        if url.netloc != "tiny":
            raise ValueError(f"unknown builtin model {spec.source!r}; builtin://tiny is the one there is")
        return seeded_model(seed)
    if url.scheme in ("file", ""):
        return load_pretrained(Path(url.path))
    raise ValueError(f"model source {spec.source!r}: the torch backend loads builtin://tiny or file:// directories")


def noisy_target(answer: str, rng: random.Random) -> str:
    """The warm-start target for one answer: numeric answers shifted by a uniform ±WARMUP_NOISE."""
    try:
        value = int(answer)
    except ValueError:
        return answer
    noisy = value + rng.randint(-WARMUP_NOISE, WARMUP_NOISE)
    return str(noisy if value < 0 else max(0, noisy))


def pad_rows(rows: list[list[int]], value: int = 0) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def warm_start(model: TinyQwen2ForCausalLM, problems: list[Problem], steps: int, seed: int = 0) -> float:
    """Supervised format warm start (see module docstring); returns the last loss."""
    tok = CharTokenizer()
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=WARMUP_LR, weight_decay=0.0)
    loss_value = float("nan")
    for _ in range(steps):
        ids, masks = [], []
        for p in rng.choices(problems, k=WARMUP_BATCH):
            prompt = tok.encode(p.prompt, bos=True)
            answer = tok.encode(noisy_target(p.answer, rng)) + [tok.EOS]
            ids.append(prompt + answer)
            masks.append([0] * len(prompt) + [1] * len(answer))
        ids_t, mask_t = pad_rows(ids), pad_rows(masks).float()
        valid = pad_rows([[1] * len(r) for r in ids]).bool()
        lp = sequence_logprobs(model, ids_t, valid)[0]
        loss = -(lp * mask_t).sum() / mask_t.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
    return loss_value


def sequence_logprobs(model: TinyQwen2ForCausalLM, ids: torch.Tensor, valid: torch.Tensor,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token logprobs and entropies [B, T] under the temperature-scaled policy (position 0 gets 0)."""
    logits = model(ids, positions_of(valid), causal_mask(valid)).float() / temperature
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return F.pad(lp, (1, 0)), F.pad(entropy, (1, 0))


@dataclass
class TrainBatch:
    """Trajectories collated into padded tensors."""

    ids: torch.Tensor
    valid: torch.Tensor
    mask: torch.Tensor
    behaviour: torch.Tensor
    advantages: torch.Tensor
    weights: torch.Tensor
    rewards: torch.Tensor

    @classmethod
    def collate(cls, groups: list[list[Trajectory]], weights: dict[str, float] | None = None) -> TrainBatch:
        trajs = [t for g in groups for t in g]
        rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float32)
        advantages = group_advantages(rewards, [t.group_id for t in trajs])
        return cls(
            ids=pad_rows([t.tokens.tolist() for t in trajs]),
            valid=pad_rows([[1] * len(t) for t in trajs]).bool(),
            mask=pad_rows([t.loss_mask.tolist() for t in trajs]).float(),
            behaviour=pad_rows([t.logprobs.tolist() for t in trajs], 0).float(),
            advantages=advantages,
            weights=torch.tensor([(weights or {}).get(t.sample_id, 1.0) for t in trajs]),
            rewards=rewards,
        )


def rl_step(model: TinyQwen2ForCausalLM, opt: torch.optim.Optimizer, batch: TrainBatch, algo: AlgorithmSpec) -> dict[str, float]:
    """One optimizer step of the clipped GRPO loss (policy_loss) plus the entropy bonus.

    ``old`` logprobs are the trainer's own before the update (the proximal policy); the
    behaviour logprobs from the engine only enter through the truncated importance weight,
    which corrects samples from older policy versions (decoupled mode).
    """
    with torch.no_grad():
        old, _ = sequence_logprobs(model, batch.ids, batch.valid, algo.temperature)
    model.train()
    logp, entropy = sequence_logprobs(model, batch.ids, batch.valid, algo.temperature)
    correction = algo.off_policy_correction
    out = policy_loss(
        logp, batch.advantages, batch.mask,
        old_logprobs=old, behaviour_logprobs=batch.behaviour,
        eps_low=algo.clip_eps_low, eps_high=algo.clip_eps_high,
        aggregation=algo.loss_aggregation,
        tis_cap=correction.truncation if correction.enabled else None,
        sample_weights=batch.weights,
    )
    loss = out.loss
    if algo.entropy_coef:
        loss = loss - algo.entropy_coef * aggregate(entropy, batch.mask, algo.loss_aggregation)
    opt.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), algo.grad_clip)
    opt.step()
    model.eval()
    m = batch.mask
    return {
        "loss": float(loss.detach()),
        "grad_norm": float(grad_norm),
        "entropy": float((entropy.detach() * m).sum() / m.sum().clamp(min=1)),
        "behaviour_gap": float(((old - batch.behaviour).abs() * m).sum() / m.sum().clamp(min=1)),
        **out.metrics,
    }


def make_optimizer(model: TinyQwen2ForCausalLM, algo: AlgorithmSpec) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=algo.learning_rate, weight_decay=algo.weight_decay)
