"""kuberl's pure-torch stand-in for the two `sgl_kernel` ops SGLang's CPU path calls.

PyPI's ``sglang-kernel`` is built for CUDA only. SGLang 0.5.23 with ``--device cpu`` calls
two functions from ``sgl_kernel`` while serving (``sglang/srt/mem_cache/allocation.py`` and
``sglang/kernels/ops/kvcache/cache_move.py``): they are implemented here. Its speculative
decoding (EAGLE) modules also import seven CPU ops at module load; kuberl never enables
speculative decoding, so those names exist only to let the import succeed and raise
`NotImplementedError` if anything ever calls them. The rollout launcher
(`kuberl.workloads.engines.sglang.launcher`) puts this directory first on the CPU server's
PYTHONPATH; on GPUs the real kernel package is used and this module is never seen.

Semantics follow SGLang's Triton versions of the same ops (its GPU path), written anew.
"""

from __future__ import annotations

import ctypes

import torch

KUBERL_STANDIN = True

# Imported at module load by sglang/kernels/ops/speculative/*.py on CPU; only called with
# --speculative-algorithm, which kuberl's launcher never passes.
SPECULATIVE_ONLY = (
    "assign_draft_cache_locs_contiguous_cpu", "assign_extend_cache_locs_cpu", "build_tree_kernel_efficient_cpu",
    "fill_accept_out_cache_loc_cpu", "fill_bonus_tokens_cpu", "rotate_input_ids_cpu", "verify_tree_greedy_cpu",
)
__all__ = [  # noqa: PLE0604 - the speculative stubs are defined in a loop below
    "assign_req_to_token_pool_cpu", "copy_all_layer_kv_cache_cpu", *SPECULATIVE_ONLY,
]


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """Write freshly allocated KV slots into each request's row of the token map.

    For request ``i`` of the batch: ``req_to_token[req_pool_indices[i], start[i]:end[i]]``
    takes the next ``end[i] - start[i]`` entries of ``out_cache_loc``, which holds the
    slots of all requests back to back in batch order. ``pool_len`` (the row length) is
    implied by ``req_to_token`` and only checked.
    """
    if req_to_token.shape[1] != pool_len:
        raise ValueError(f"pool_len {pool_len} != req_to_token row length {req_to_token.shape[1]}")
    rows = req_pool_indices.tolist()
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    taken = 0
    for row, start, end in zip(rows, starts, ends, strict=True):
        n = end - start
        if n <= 0:
            continue
        req_to_token[row, start:end] = out_cache_loc[taken : taken + n].to(req_to_token.dtype)
        taken += n


def _host_bytes(address: int, nbytes: int) -> torch.Tensor:
    """A uint8 tensor viewing ``nbytes`` of this process's memory at ``address`` (no copy)."""
    return torch.frombuffer((ctypes.c_uint8 * nbytes).from_address(address), dtype=torch.uint8)


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor,
    strides: torch.Tensor,
    tgt_loc: torch.Tensor,
    src_loc: torch.Tensor,
) -> None:
    """In every KV buffer, copy slot ``src_loc[j]`` to slot ``tgt_loc[j]`` for all ``j``.

    ``data_ptrs[b]`` is the address of buffer ``b`` (a contiguous CPU tensor whose first
    dimension is the slot) and ``strides[b]`` its bytes per slot, both the slot stride and
    the number of bytes copied. All sources are read before any target is written, so
    overlapping source and target sets copy as if from a snapshot.
    """
    if tgt_loc.numel() != src_loc.numel():
        raise ValueError(f"{tgt_loc.numel()} targets for {src_loc.numel()} sources")
    if tgt_loc.numel() == 0:
        return
    tgt = tgt_loc.to(torch.long)
    src = src_loc.to(torch.long)
    slots = int(max(int(tgt.max()), int(src.max()))) + 1
    for address, stride in zip(data_ptrs.tolist(), strides.tolist(), strict=True):
        stride = int(stride)
        rows = _host_bytes(int(address), slots * stride).view(slots, stride)
        rows[tgt] = rows[src]  # the gather on the right is materialised first


def _not_implemented(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} is not provided by kuberl's CPU stand-in: it serves SGLang's speculative "
            "decoding, which kuberl does not enable on CPU (drop --speculative-algorithm)")

    op.__name__ = op.__qualname__ = name
    return op


for _name in SPECULATIVE_ONLY:
    globals()[_name] = _not_implemented(_name)
del _name
