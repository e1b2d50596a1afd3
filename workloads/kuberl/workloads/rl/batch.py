"""Scored trajectories → one padded rollout batch: what every trainer backend trains on."""

from __future__ import annotations

import torch

from kuberl.workloads.buffer.records import Trajectory
from kuberl.workloads.rl.advantages import group_advantages
from kuberl.workloads.rl.ppo import RolloutBatch


def pad_rows(rows: list[list[int]], value: int = 0) -> torch.Tensor:
    """Right-padded [len(rows), longest] tensor."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def collate(groups: list[list[Trajectory]], weights: dict[str, float] | None = None, *,
            scale_by_std: bool = True, pad_id: int = 0) -> RolloutBatch:
    """Trajectories (whole groups) into one right-padded rollout batch with its GRPO advantages.

    ``pad_id`` only fills positions ``valid`` marks as padding (no loss, never attended to),
    so any id works; the tokenizer's pad id keeps the tensors readable.
    """
    trajs = [t for g in groups for t in g]
    rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float64)
    # An infrastructure failure has no reward: its loss mask is all 0 and it sits in a group
    # of its own (advantage 0), so its group's statistics are those of the samples scored.
    group_ids = [t.group_id if t.failure is None else ("failed", t.sample_id) for t in trajs]
    return RolloutBatch(
        ids=pad_rows([t.tokens.tolist() for t in trajs], pad_id),
        valid=pad_rows([[1] * len(t) for t in trajs]).bool(),
        mask=pad_rows([t.loss_mask.tolist() if t.failure is None else [0] * len(t) for t in trajs]).float(),
        behaviour=pad_rows([t.logprobs.tolist() for t in trajs], 0).float(),
        advantages=group_advantages(rewards, group_ids, scale_by_std=scale_by_std).float(),  # as the logprobs
        weights=torch.tensor([(weights or {}).get(t.sample_id, 1.0) for t in trajs], dtype=torch.float32),
        rewards=rewards,
    )
