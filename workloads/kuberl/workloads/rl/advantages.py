"""GRPO group-normalised advantages. Pure."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch


def group_advantages(rewards: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor | None = None, *,
                     group_size: int | None = None, scale_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages: ``(r - mean_g) / (std_g + eps)`` within each group.

    Groups are given by ``group_ids`` (any order, any sizes) or as contiguous runs of
    ``group_size``. The std is the unbiased sample std, as in GRPO; a group of one gets 0.
    """
    r = rewards.float().flatten()
    if group_ids is None:
        if not group_size or r.numel() % group_size:
            raise ValueError(f"{r.numel()} rewards do not split into groups of {group_size}")
        idx = torch.arange(r.numel(), device=r.device) // group_size
    elif isinstance(group_ids, torch.Tensor):
        idx = torch.unique(group_ids.flatten(), return_inverse=True)[1].to(r.device)
    else:
        index: dict[Hashable, int] = {}
        idx = torch.tensor([index.setdefault(g, len(index)) for g in group_ids], device=r.device)
    if idx.numel() != r.numel():
        raise ValueError(f"{r.numel()} rewards but {idx.numel()} group ids")
    n_groups = int(idx.max()) + 1 if r.numel() else 0
    zeros = r.new_zeros(n_groups)
    count = zeros.index_add(0, idx, torch.ones_like(r))
    mean = zeros.index_add(0, idx, r) / count
    centred = r - mean[idx]
    if not scale_by_std:
        return centred
    var = zeros.index_add(0, idx, centred**2) / (count - 1).clamp(min=1)
    std = var.sqrt()[idx]
    # Flat groups and groups of one carry no signal: exactly 0, even with eps=0.
    return torch.where((count[idx] > 1) & (std > 0), centred / (std + eps), torch.zeros_like(r))
