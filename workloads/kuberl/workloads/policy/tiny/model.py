"""The tiny Qwen2-architecture model (HF names and config) that CPU jobs train."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kuberl.workloads.policy.tiny.checkpoint import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE


@dataclass(frozen=True)
class TinyConfig:
    """The subset of a Hugging Face Qwen2 config the model uses (same field names)."""

    vocab_size: int = VOCAB_SIZE
    hidden_size: int = 96
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 128
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_hf(self) -> dict:
        """config.json as transformers/SGLang read it for Qwen2ForCausalLM."""
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            **asdict(self),
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "use_sliding_window": False,
            "torch_dtype": "float32",
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
            "pad_token_id": PAD_ID,
        }

    @classmethod
    def from_hf(cls, hf: dict) -> TinyConfig:
        return cls(**{k: hf[k] for k in cls.__dataclass_fields__ if k in hf})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape [B, T, head_dim] for integer positions [B, T] (HF's rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = positions.float()[..., None] * inv_freq
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [B, T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class Attention(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_attention_heads * hd, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_key_value_heads * hd, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_key_value_heads * hd, bias=True)
        self.o_proj = nn.Linear(cfg.num_attention_heads * hd, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int):
        b, t, _ = x.shape
        cfg, hd = self.cfg, self.cfg.head_dim
        q = self.q_proj(x).view(b, t, cfg.num_attention_heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, cfg.num_key_value_heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, cfg.num_key_value_heads, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        groups = cfg.num_attention_heads // cfg.num_key_value_heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache, layer):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class KVCache:
    """Preallocated keys/values for every layer: [B, kv_heads, max_len, head_dim]."""

    def __init__(self, cfg: TinyConfig, batch: int, max_len: int, dtype=torch.float32):
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.length = 0
        self._step = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        t = k.shape[2]
        self.k[layer][:, :, self.length : self.length + t] = k
        self.v[layer][:, :, self.length : self.length + t] = v
        end = self.length + t
        if layer == len(self.k) - 1:
            self._step = t
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self) -> None:
        self.length += self._step


class Qwen2Model(nn.Module):
    """``model.*`` in the HF naming: embeddings, layers, final norm."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class TinyQwen2ForCausalLM(nn.Module):
    """The policy. ``forward`` takes ids, their positions and a boolean attention mask."""

    def __init__(self, cfg: TinyConfig = TinyConfig()):
        super().__init__()
        self.config = cfg
        self.model = Qwen2Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.05)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.1)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        """Logits [B, T, V]. ``mask`` is [B, T, S] (True = may attend), S = cached + T keys."""
        cos, sin = rope_tables(positions, self.config.head_dim, self.config.rope_theta)
        x = self.model.embed_tokens(ids)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.advance()
        return self.lm_head(self.model.norm(x))


def causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """[B, T, T] mask for right- or left-padded rows: causal, and never attending to padding.

    A padding query row still attends to itself so softmax never sees an all-masked row.
    """
    t = valid.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    mask = causal[None] & valid[:, None, :]
    return mask | torch.eye(t, dtype=torch.bool)[None]


def positions_of(valid: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding: the same token gets the same position left- or right-padded."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(model: TinyQwen2ForCausalLM, ids: torch.Tensor, valid: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each token given the ones before it, [B, T]; position 0 gets 0."""
    logits = model(ids, positions_of(valid), causal_mask(valid)).float() / temperature
    lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return F.pad(lp, (1, 0))


def save_pretrained(model: TinyQwen2ForCausalLM, directory: str | Path) -> None:
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(model.config.to_hf(), indent=2))
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))


def load_pretrained(directory: str | Path) -> TinyQwen2ForCausalLM:
    from safetensors.torch import load_file

    d = Path(directory)
    cfg = TinyConfig.from_hf(json.loads((d / "config.json").read_text()))
    model = TinyQwen2ForCausalLM(cfg)
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    return model


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def seeded_model(seed: int = 0, cfg: TinyConfig = TinyConfig()) -> TinyQwen2ForCausalLM:
    """A freshly initialised model, identical in every process for a given seed."""
    torch.manual_seed(seed)
    return TinyQwen2ForCausalLM(cfg)
