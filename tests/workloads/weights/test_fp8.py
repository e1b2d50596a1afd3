"""Blockwise FP8: layout, the high-precision rule, and round-trip error bounds (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kuberl.workloads.weights.fp8 import (
    FP8_DTYPE,
    FP8_MAX,
    dequantize_blockwise,
    dequantize_state_dict,
    error_bound,
    keep_high_precision,
    quantization_config,
    quantize_blockwise,
    quantize_state_dict,
)


def test_layout_and_scale_shape():
    w = torch.randn(256, 384, dtype=torch.bfloat16)
    q, s = quantize_blockwise(w)
    assert q.dtype == FP8_DTYPE and q.shape == w.shape
    assert s.dtype == torch.float32 and s.shape == (2, 3)
    # The largest magnitude of every block maps onto e4m3's max exactly.
    blocks = q.float().view(2, 128, 3, 128).abs().amax(dim=(1, 3))
    assert torch.all(blocks == FP8_MAX)


def test_hand_computed_block():
    w = torch.zeros(128, 128)
    w[0, 0], w[5, 7], w[1, 1] = 896.0, -448.0, 3.0
    q, s = quantize_blockwise(w)
    assert s.item() == 2.0  # 896 / 448
    assert q[0, 0].float() == 448 and q[5, 7].float() == -224 and q[1, 1].float() == 1.5
    assert torch.equal(dequantize_blockwise(q, s), w)


def test_zero_block_and_ragged_edges():
    w = torch.zeros(130, 200)
    q, s = quantize_blockwise(w)
    assert s.shape == (2, 2) and torch.all(s == 1)
    assert torch.equal(dequantize_blockwise(q, s), w)


def test_high_precision_rule():
    big = torch.randn(256, 256)
    assert keep_high_precision("model.layers.0.mlp.down_proj.weight", big) is None
    assert keep_high_precision("model.embed_tokens.weight", big) == "embedding"
    assert keep_high_precision("lm_head.weight", big) == "lm_head"
    assert keep_high_precision("model.layers.0.input_layernorm.weight", torch.ones(256)) == "1-D"
    assert keep_high_precision("model.norm.weight", torch.ones(256, 256)) == "norm"
    assert keep_high_precision("model.layers.0.self_attn.q_proj.bias", torch.ones(256)).startswith("not a .weight")
    assert keep_high_precision("model.layers.0.mlp.gate.weight", big) == "moe router"
    assert keep_high_precision("model.layers.0.mlp.gate_proj.weight", big) is None
    assert keep_high_precision("model.layers.0.self_attn.k_proj.weight", torch.randn(200, 256)).startswith("shape")


def test_state_dict_round_trip_leaves_high_precision_untouched():
    g = torch.Generator().manual_seed(0)
    sd = {
        "model.embed_tokens.weight": torch.randn(512, 256, generator=g).bfloat16(),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(256, 256, generator=g).bfloat16(),
        "model.layers.0.self_attn.q_proj.bias": torch.randn(256, generator=g).bfloat16(),
        "model.layers.0.self_attn.o_proj.weight": torch.randn(256, 200, generator=g).bfloat16(),
        "model.layers.0.input_layernorm.weight": torch.ones(256).bfloat16(),
        "lm_head.weight": torch.randn(512, 256, generator=g).bfloat16(),
    }
    q, kept = quantize_state_dict(sd)
    assert set(kept) == set(sd) - {"model.layers.0.self_attn.q_proj.weight"}
    assert q["model.layers.0.self_attn.q_proj.weight"].dtype == FP8_DTYPE
    assert q["model.layers.0.self_attn.q_proj.weight_scale_inv"].shape == (2, 2)
    for name in kept:
        assert q[name] is sd[name]  # the very same tensor: bit-identical, no copy
    back = dequantize_state_dict(q, torch.float32)
    assert set(back) == set(sd)
    w = sd["model.layers.0.self_attn.q_proj.weight"].float()
    assert torch.all((back["model.layers.0.self_attn.q_proj.weight"] - w).abs()
                     <= error_bound(w, q["model.layers.0.self_attn.q_proj.weight_scale_inv"]))
    cfg = quantization_config(kept)
    assert cfg == {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                   "weight_block_size": [128, 128], "ignored_layers": ["model.layers.0.self_attn.o_proj"]}


@st.composite
def weights(draw):
    rows = draw(st.integers(1, 3)) * 128 - draw(st.sampled_from([0, 0, 5]))
    cols = draw(st.integers(1, 3)) * 128 - draw(st.sampled_from([0, 0, 17]))
    seed = draw(st.integers(0, 2**31 - 1))
    log_scale = draw(st.floats(-20, 20))  # weights from 1e-9 to 1e9 in magnitude
    outliers = draw(st.booleans())
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * (2.0**log_scale)
    if outliers:  # a few huge values push most of their block into the subnormal range
        idx = torch.randint(0, rows * cols, (3,), generator=g)
        w.view(-1)[idx] *= 1e4
    return w.to(dtype)


@settings(max_examples=60, deadline=None)
@given(weights())
def test_round_trip_error_within_bound(w):
    q, s = quantize_blockwise(w)
    assert torch.isfinite(q.float()).all()
    back = dequantize_blockwise(q, s, torch.float32)
    ref = w.float()
    err = (back - ref).abs()
    assert torch.all(err <= error_bound(ref, s)), f"max excess {(err - error_bound(ref, s)).max()}"
    # In aggregate: relative Frobenius error well under e4m3's half-ulp of 6.25 %.
    assert err.norm() <= 0.0625 * ref.norm() + 1e-30
