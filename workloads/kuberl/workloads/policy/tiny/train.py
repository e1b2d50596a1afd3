"""The tiny torch model's training step: per-token logprobs and the `PolicyBackend` of rl.ppo."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kuberl.workloads.policy.tiny.model import TinyQwen2ForCausalLM, causal_mask, positions_of
from kuberl.workloads.spec import AlgorithmSpec


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

    def dp_max(self, value: torch.Tensor) -> torch.Tensor:
        if self.dp_group is None:
            return value
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.dp_group)
        return value


def make_optimizer(model: TinyQwen2ForCausalLM, algo: AlgorithmSpec) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=algo.learning_rate, weight_decay=algo.weight_decay)
