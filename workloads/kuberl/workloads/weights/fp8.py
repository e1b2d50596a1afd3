"""Blockwise FP8 weights for rollout engines (DeepSeek-V3 / SGLang checkpoint layout).

A 2-D weight ``W`` (out × in) becomes

* ``<name>.weight``           — ``float8_e4m3fn``, same shape as ``W``;
* ``<name>.weight_scale_inv`` — ``float32``, shape ``(ceil(out/128), ceil(in/128))``, one per
  128×128 block, with ``W ≈ weight.float() * scale_inv`` block-wise (the name says "inverse"
  because the quantiser divides by it).

Each block's scale maps its largest magnitude onto e4m3's largest finite value (448), so no
value saturates and each keeps e4m3's 3 mantissa bits: relative error ≤ 2⁻⁴ for normal
values, absolute error ≤ 2⁻¹⁰·scale in the subnormal range (see :func:`error_bound`).

Which tensors stay in high precision is one explicit rule, :func:`keep_high_precision`:
FP8 GEMM kernels only serve linear layers with whole 128-blocks, and the embedding,
lm_head and norms are precision-sensitive and cheap. Engines fuse ``q/k/v_proj`` and
``gate/up_proj`` into one layer and refuse one whose shards mix precisions, so a shard
kept in high precision keeps its whole group (:func:`fused_group`). ``config.json`` gets
``quantization_config`` (see :func:`quantization_config`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

BLOCK = 128
CHUNK_BYTES = 4 * 1024 * 1024  # float32 quantised per pass on the CPU: fits its caches
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
SCALE_SUFFIX = "_scale_inv"

# Name patterns (HF parameter names) that always stay high precision.
_HIGH_PRECISION_NAMES = (
    (re.compile(r"(^|\.)(embed_tokens|wte|wpe|word_embeddings|embeddings?)\."), "embedding"),
    (re.compile(r"(^|\.)(lm_head|output_layer)\."), "lm_head"),
    (re.compile(r"norm|ln_\d|ln_f|layernorm", re.IGNORECASE), "norm"),
    (re.compile(r"(^|\.)(router|gate)\.weight$"), "moe router"),
)


def keep_high_precision(name: str, tensor: torch.Tensor, block: int = BLOCK) -> str | None:
    """Why ``name`` stays in its training dtype, or None when it is quantised.

    Order matters only for the reason reported; any match keeps the tensor.
    """
    if not name.endswith(".weight"):
        return "not a .weight (bias or buffer)"
    if not tensor.is_floating_point():
        return "not floating point"
    if tensor.ndim != 2:
        return f"{tensor.ndim}-D"
    for pattern, reason in _HIGH_PRECISION_NAMES:
        if pattern.search(name):
            return reason
    rows, cols = tensor.shape
    if rows % block or cols % block:
        return f"shape {tuple(tensor.shape)} not a multiple of {block}"
    return None


_FUSED_SHARDS = re.compile(r"^(?P<module>.*\.)(?P<shard>q_proj|k_proj|v_proj|gate_proj|up_proj)\.weight$")
_FUSED_GROUP = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}


def fused_group(name: str) -> str | None:
    """The fused layer an HF weight is a shard of (``model.layers.0.self_attn.qkv``), or None."""
    m = _FUSED_SHARDS.match(name)
    return m["module"] + _FUSED_GROUP[m["shard"]] if m else None


def quantize_blockwise(w: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, fp32 scale_inv per block). Ragged edge blocks are allowed here."""
    if w.ndim != 2:
        raise ValueError(f"blockwise FP8 needs a 2-D tensor, got shape {tuple(w.shape)}")
    rows, cols = w.shape
    br, bc = -(-rows // block), -(-cols // block)
    x = w.detach().float().contiguous()
    if rows % block or cols % block:  # zeros change no block's largest magnitude
        x = torch.nn.functional.pad(x, (0, bc * block - cols, 0, br * block - rows))
    q = torch.empty(br * block, bc * block, dtype=FP8_DTYPE, device=w.device)
    scale_inv = torch.empty(br, bc, dtype=torch.float32, device=w.device)
    # On the CPU a few block rows at a time (about CHUNK_BYTES of float32): each pass over
    # them then runs in the caches, 3x the rate of whole-tensor passes. A GPU takes it whole.
    step = br if x.device.type != "cpu" else max(1, CHUNK_BYTES // (4 * block * bc * block))
    for first in range(0, br, step):
        blocks = x[first * block:(first + step) * block].view(-1, block, bc, block)  # [block row, row, block col, col]
        # The largest magnitude from max and min: no |x| copy.
        amax = torch.maximum(blocks.amax(dim=(1, 3)), blocks.amin(dim=(1, 3)).neg())
        # An all-zero block gets scale 1 (any value works; avoids 0/0).
        scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        scale_inv[first:first + step] = scale
        # clamp: fp32 rounding can exceed 448
        q[first * block:(first + step) * block] = (blocks / scale[:, None, :,
                                                                  None]).clamp_(-FP8_MAX, FP8_MAX).view(-1, bc * block)
    q = q[:rows, :cols]
    return q.contiguous(), scale_inv.contiguous()


def dequantize_blockwise(q: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype = torch.float32,
                         block: int = BLOCK) -> torch.Tensor:
    rows, cols = q.shape
    s = scale_inv.repeat_interleave(block, 0).repeat_interleave(block, 1)[:rows, :cols]
    return (q.float() * s).to(dtype)


def error_bound(w: torch.Tensor, scale_inv: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Element-wise bound on ``|dequant(quant(w)) - w|`` (in fp32).

    e4m3 has 3 mantissa bits: round-to-nearest is within half an ulp, 2⁻⁴·|v| for normal
    v = w/scale (|v| ≥ 2⁻⁶) and 2⁻¹⁰ in the subnormal range (ulp 2⁻⁹). Scaled back, that is
    ``max(|w|·2⁻⁴, scale·2⁻¹⁰)``; a small slack covers the fp32 division and multiplication.
    """
    rows, cols = w.shape
    s = scale_inv.repeat_interleave(block, 0).repeat_interleave(block, 1)[:rows, :cols]
    return torch.maximum(w.float().abs() * 2.0**-4, s * 2.0**-10) * (1 + 1e-5) + 1e-30


def quantize_state_dict(state: Mapping[str, torch.Tensor], block: int = BLOCK
                        ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(new state dict, {name: reason} of tensors left in high precision, untouched)."""
    reasons = {name: keep_high_precision(name, t, block) for name, t in state.items()}
    for name, reason in list(reasons.items()):
        group = fused_group(name)
        if reason is not None and group is not None:
            for other in state:
                if other != name and fused_group(other) == group and reasons[other] is None:
                    reasons[other] = f"fused with {name} ({reason})"
    out: dict[str, torch.Tensor] = {}
    kept: dict[str, str] = {}
    for name, t in state.items():
        reason = reasons[name]
        if reason is not None:
            out[name] = t
            kept[name] = reason
            continue
        q, s = quantize_blockwise(t, block)
        out[name] = q
        out[name + SCALE_SUFFIX] = s
    return out, kept


def dequantize_state_dict(state: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16,
                          block: int = BLOCK) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in state.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = state.get(name + SCALE_SUFFIX)
        out[name] = dequantize_blockwise(t, scale, dtype, block) if scale is not None else t
    return out


def quantization_config(kept: Mapping[str, str] | None = None, block: int = BLOCK) -> dict:
    """``config.json``'s ``quantization_config`` for the checkpoint.

    ``ignored_layers`` lists linear modules (2-D ``.weight`` kept by the shape rule, say) that
    an engine would otherwise expect in FP8; embeddings, norms and lm_head are never FP8
    layers in SGLang/vLLM, so they need no mention.
    """
    cfg = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
           "weight_block_size": [block, block]}
    ignored = sorted(
        name.removesuffix(".weight")
        for name, reason in (kept or {}).items()
        if reason.startswith(("shape", "fused")) or reason == "moe router"
    )
    if ignored:
        cfg["ignored_layers"] = ignored
    return cfg
