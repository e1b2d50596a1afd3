"""HF (Llama/Qwen2 names) <-> megatron-core GPTModel parameters, per tensor-parallel rank. Pure.

Written for kuberl (megatron-bridge needs TransformerEngine, which does not install on
CPU machines). Layout facts this relies on, for megatron-core's local layer spec:
* `linear_qkv` stacks, per KV group, that group's query heads, then its key head, then its
  value head; tensor parallelism splits whole groups across ranks.
* `linear_fc1` of a gated MLP is [gate; up] *per rank*: each rank holds its slice of
  gate followed by its slice of up.
* Column-parallel layers (qkv, fc1, embedding, output) split dim 0; row-parallel layers
  (proj, fc2) split dim 1; norms are replicated.
* The vocabulary is padded to a multiple of the TP size; padded rows are zeros and the
  backend masks their logits, so they never change a probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class HFShape:
    """The architecture numbers of an HF Llama/Qwen2 config that the mapping needs."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    qkv_bias: bool

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "HFShape":
        heads = cfg["num_attention_heads"]
        model_type = cfg.get("model_type", "llama")
        return cls(
            num_layers=cfg["num_hidden_layers"],
            hidden_size=cfg["hidden_size"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads", heads),
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            intermediate_size=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"],
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
        )


def padded_vocab(vocab_size: int, tp: int) -> int:
    """Vocabulary size rounded up so every TP rank holds an equal slice."""
    return -(-vocab_size // tp) * tp


def check_parallelism(shape: HFShape, tp: int, pp: int) -> None:
    """Refuse layouts megatron cannot shard, naming the numbers that clash."""
    problems = []
    if shape.num_heads % tp:
        problems.append(f"num_attention_heads={shape.num_heads} is not divisible by tensor parallel size {tp}")
    if shape.num_kv_heads % tp:
        problems.append(f"num_key_value_heads={shape.num_kv_heads} is not divisible by tensor parallel size {tp}")
    if shape.intermediate_size % tp:
        problems.append(f"intermediate_size={shape.intermediate_size} is not divisible by tensor parallel size {tp}")
    if shape.num_layers % pp:
        problems.append(f"num_hidden_layers={shape.num_layers} is not divisible by pipeline parallel size {pp}")
    if problems:
        raise ValueError("; ".join(problems))


def _layer_range(shape: HFShape, pp: int, pp_rank: int) -> range:
    per_stage = shape.num_layers // pp
    return range(pp_rank * per_stage, (pp_rank + 1) * per_stage)


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    if t.shape[0] == rows:
        return t
    pad = t.new_zeros((rows - t.shape[0], *t.shape[1:]))
    return torch.cat([t, pad], dim=0)


def _interleave_qkv(q: Tensor, k: Tensor, v: Tensor, shape: HFShape) -> Tensor:
    """HF q/k/v (weights or biases) -> megatron's per-group [q..., k, v] stacking."""
    per_group = shape.num_heads // shape.num_kv_heads
    tail = q.shape[1:]
    q = q.reshape(shape.num_kv_heads, per_group * shape.head_dim, *tail)
    k = k.reshape(shape.num_kv_heads, shape.head_dim, *tail)
    v = v.reshape(shape.num_kv_heads, shape.head_dim, *tail)
    return torch.cat([q, k, v], dim=1).reshape(-1, *tail)


def _split_qkv(qkv: Tensor, shape: HFShape) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of `_interleave_qkv` for the full (all ranks) tensor."""
    per_group = shape.num_heads // shape.num_kv_heads
    tail = qkv.shape[1:]
    grouped = qkv.reshape(shape.num_kv_heads, (per_group + 2) * shape.head_dim, *tail)
    q, k, v = torch.split(grouped, [per_group * shape.head_dim, shape.head_dim, shape.head_dim], dim=1)
    return q.reshape(-1, *tail), k.reshape(-1, *tail), v.reshape(-1, *tail)


def hf_to_megatron(hf: dict[str, Tensor], shape: HFShape, *, tp: int = 1, tp_rank: int = 0, pp: int = 1,
                   pp_rank: int = 0) -> dict[str, Tensor]:
    """The megatron state dict slice that rank (tp_rank, pp_rank) loads."""
    check_parallelism(shape, tp, pp)
    out: dict[str, Tensor] = {}

    def col(t: Tensor) -> Tensor:
        return t.chunk(tp, dim=0)[tp_rank].clone()

    def row(t: Tensor) -> Tensor:
        return t.chunk(tp, dim=1)[tp_rank].clone()

    vocab = padded_vocab(shape.vocab_size, tp)
    first, last = pp_rank == 0, pp_rank == pp - 1
    if first or shape.tied_embeddings:
        out["embedding.word_embeddings.weight"] = col(_pad_rows(hf["model.embed_tokens.weight"], vocab))
    if last:
        out["decoder.final_layernorm.weight"] = hf["model.norm.weight"].clone()
        if not shape.tied_embeddings:
            out["output_layer.weight"] = col(_pad_rows(hf["lm_head.weight"], vocab))
    for local, layer in enumerate(_layer_range(shape, pp, pp_rank)):
        src, dst = f"model.layers.{layer}.", f"decoder.layers.{local}."
        out[dst + "input_layernorm.weight"] = hf[src + "input_layernorm.weight"].clone()
        out[dst + "pre_mlp_layernorm.weight"] = hf[src + "post_attention_layernorm.weight"].clone()
        attn = src + "self_attn."
        qkv = _interleave_qkv(hf[attn + "q_proj.weight"], hf[attn + "k_proj.weight"], hf[attn + "v_proj.weight"], shape)
        out[dst + "self_attention.linear_qkv.weight"] = col(qkv)
        if shape.qkv_bias:
            bias = _interleave_qkv(hf[attn + "q_proj.bias"], hf[attn + "k_proj.bias"], hf[attn + "v_proj.bias"], shape)
            out[dst + "self_attention.linear_qkv.bias"] = col(bias)
        out[dst + "self_attention.linear_proj.weight"] = row(hf[attn + "o_proj.weight"])
        mlp = src + "mlp."
        out[dst + "mlp.linear_fc1.weight"] = torch.cat([col(hf[mlp + "gate_proj.weight"]),
                                                        col(hf[mlp + "up_proj.weight"])], dim=0)
        out[dst + "mlp.linear_fc2.weight"] = row(hf[mlp + "down_proj.weight"])
    return out


def param_to_hf(name: str, slices: list[Tensor], shape: HFShape, *, pp: int = 1, pp_rank: int = 0) -> dict[str, Tensor]:
    """The HF tensors of one megatron parameter of stage ``pp_rank``, from its slices on every
    tensor-parallel rank (in rank order). A stage that is not the one an HF tensor is taken
    from gives nothing for it (a tied embedding on the last stage: the first stage's is it)."""
    def cat0() -> Tensor:
        return torch.cat(slices, dim=0)

    def cat1() -> Tensor:
        return torch.cat(slices, dim=1)

    if name == "embedding.word_embeddings.weight":
        return {"model.embed_tokens.weight": cat0()[: shape.vocab_size].clone()} if pp_rank == 0 else {}
    if name == "decoder.final_layernorm.weight":
        return {"model.norm.weight": slices[0].clone()}
    if name == "output_layer.weight":
        return {"lm_head.weight": cat0()[: shape.vocab_size].clone()}
    if not name.startswith("decoder.layers."):
        raise KeyError(f"no HF tensor for megatron parameter {name}")
    local, rest = name[len("decoder.layers."):].split(".", 1)
    dst = f"model.layers.{_layer_range(shape, pp, pp_rank)[int(local)]}."
    if rest == "input_layernorm.weight":
        return {dst + "input_layernorm.weight": slices[0].clone()}
    if rest == "pre_mlp_layernorm.weight":
        return {dst + "post_attention_layernorm.weight": slices[0].clone()}
    if rest in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
        kind = rest.rsplit(".", 1)[1]
        q, k, v = _split_qkv(cat0(), shape)
        return {f"{dst}self_attn.q_proj.{kind}": q, f"{dst}self_attn.k_proj.{kind}": k,
                f"{dst}self_attn.v_proj.{kind}": v}
    if rest == "self_attention.linear_proj.weight":
        return {dst + "self_attn.o_proj.weight": cat1()}
    if rest == "mlp.linear_fc1.weight":
        halves = [t.chunk(2, dim=0) for t in slices]  # each rank holds [its gate; its up]
        return {dst + "mlp.gate_proj.weight": torch.cat([g for g, _ in halves], dim=0),
                dst + "mlp.up_proj.weight": torch.cat([u for _, u in halves], dim=0)}
    if rest == "mlp.linear_fc2.weight":
        return {dst + "mlp.down_proj.weight": cat1()}
    raise KeyError(f"no HF tensor for megatron parameter {name}")


def megatron_to_hf(ranks: list[list[dict[str, Tensor]]], shape: HFShape) -> dict[str, Tensor]:
    """Reassemble HF parameters from every rank's megatron state: `ranks[pp_rank][tp_rank]`."""
    hf: dict[str, Tensor] = {}
    for pp_rank, stage in enumerate(ranks):
        for name in stage[0]:
            hf.update(param_to_hf(name, [r[name] for r in stage], shape, pp=len(ranks), pp_rank=pp_rank))
    return hf
