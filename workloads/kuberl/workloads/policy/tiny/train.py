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
from kuberl.workloads.rl.ppo import RolloutBatch
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
    logits = model(ids, positions_of(valid), causal_mask(valid))
    # Half-precision logits are upcast; float64 models stay float64 (exactness tests).
    logits = (logits if logits.dtype == torch.float64 else logits.float()) / temperature
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return F.pad(lp, (1, 0)), F.pad(entropy, (1, 0))


def collate(groups: list[list[Trajectory]], weights: dict[str, float] | None = None, *,
            scale_by_std: bool = True) -> RolloutBatch:
    """Trajectories (whole groups) into one padded rollout batch with its GRPO advantages."""
    trajs = [t for g in groups for t in g]
    rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float64)
    return RolloutBatch(
        ids=pad_rows([t.tokens.tolist() for t in trajs]),
        valid=pad_rows([[1] * len(t) for t in trajs]).bool(),
        mask=pad_rows([t.loss_mask.tolist() for t in trajs]).float(),
        behaviour=pad_rows([t.logprobs.tolist() for t in trajs], 0).float(),
        advantages=group_advantages(rewards, [t.group_id for t in trajs], scale_by_std=scale_by_std),
        weights=torch.tensor([(weights or {}).get(t.sample_id, 1.0) for t in trajs], dtype=torch.float32),
        rewards=rewards,
    )


class TinyBackend:
    """The tiny torch model as a :class:`~kuberl.workloads.rl.ppo.PolicyBackend`.

    ``dp_group``: a torch.distributed group of data-parallel replicas; gradients and the
    loss counts are summed over it (each rank's loss is already divided by the global count).
    """

    def __init__(self, model: TinyQwen2ForCausalLM, optimizer: torch.optim.Optimizer | None = None,
                 grad_clip: float = 1.0, dp_group=None):
        self.model, self.optimizer, self.grad_clip, self.dp_group = model, optimizer, grad_clip, dp_group

    def logprobs(self, ids: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
        with torch.no_grad():
            return sequence_logprobs(self.model, ids, valid, temperature)[0]

    def forward_backward(self, ids, valid, temperature, loss_fn) -> None:
        self.model.train()
        logp, entropy = sequence_logprobs(self.model, ids, valid, temperature)
        loss_fn(logp, entropy).backward()
        self.model.eval()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.dp_group is not None:
            import torch.distributed as dist

            for p in params:
                dist.all_reduce(p.grad, group=self.dp_group)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        return float(grad_norm)

    def dp_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.dp_group is None:
            return value
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value, group=self.dp_group)
        return value


def make_optimizer(model: TinyQwen2ForCausalLM, algo: AlgorithmSpec) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=algo.learning_rate, weight_decay=algo.weight_decay)
