"""GRPO group-normalised advantages. Pure.

Group statistics are computed in float64 whatever the rewards' dtype: in float32 the mean
of ``[0.9, 0.9, 0.9]`` is not exactly 0.9, the centred values are ±1e-8 instead of 0, and
dividing by a std of the same size turned a flat group into advantages of ±0.06. A group
whose rewards span no more than ``flat_tolerance`` carries no signal and gets exactly 0.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

FLAT_TOLERANCE = 1e-6
"""Groups whose max − min reward is at most this are flat (no learning signal). Dynamic
sampling (`rl.sampling.has_signal`) drops exactly these groups, so a kept group never trains
on all-zero advantages."""


def group_index(n: int, group_ids: Sequence[Hashable] | torch.Tensor | None, group_size: int | None,
                device: torch.device | None = None) -> torch.Tensor:
    """A dense group index 0..G-1 per sample, from ids (any order, any sizes) or contiguous runs of ``group_size``."""
    if group_ids is None:
        if not group_size or n % group_size:
            raise ValueError(f"{n} rewards do not split into groups of {group_size}")
        return torch.arange(n, device=device) // group_size
    if isinstance(group_ids, torch.Tensor):
        idx = torch.unique(group_ids.flatten(), return_inverse=True)[1].to(device)
    else:
        index: dict[Hashable, int] = {}
        idx = torch.tensor([index.setdefault(g, len(index)) for g in group_ids], dtype=torch.long, device=device)
    if idx.numel() != n:
        raise ValueError(f"{n} rewards but {idx.numel()} group ids")
    return idx


def group_advantages(rewards: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor | None = None, *,
                     group_size: int | None = None, scale_by_std: bool = True, eps: float = 1e-6,
                     flat_tolerance: float = FLAT_TOLERANCE) -> torch.Tensor:
    """GRPO advantages ``(r − mean_g) / (std_g + eps)`` within each group, in the rewards'
    floating dtype (float32 for integer rewards; the statistics are float64 either way).

    The std is the unbiased sample std (divisor n − 1), what GRPO's reference
    implementations compute (``torch.std``), so learning rates tuned there carry over.
    ``scale_by_std=False`` leaves the centred rewards (Dr. GRPO: dividing by the std
    up-weights groups that are nearly solved or nearly failed). Flat groups and groups of
    one give exactly 0.
    """
    r = rewards.detach().to(torch.float64).flatten()
    idx = group_index(r.numel(), group_ids, group_size, r.device)
    n_groups = int(idx.max()) + 1 if r.numel() else 0
    zeros = r.new_zeros(n_groups)
    count = zeros.index_add(0, idx, torch.ones_like(r))
    mean = zeros.index_add(0, idx, r) / count
    high = r.new_full((n_groups,), -torch.inf).scatter_reduce(0, idx, r, "amax")
    low = r.new_full((n_groups,), torch.inf).scatter_reduce(0, idx, r, "amin")
    flat = ((high - low) <= flat_tolerance) | (count < 2)
    centred = r - mean[idx]
    if scale_by_std:
        var = r.new_zeros(n_groups).index_add(0, idx, centred**2) / (count - 1).clamp(min=1)
        centred = centred / (var.sqrt()[idx] + eps)
    out_dtype = rewards.dtype if rewards.dtype.is_floating_point else torch.float32
    return torch.where(flat[idx], torch.zeros_like(centred), centred).to(out_dtype)
