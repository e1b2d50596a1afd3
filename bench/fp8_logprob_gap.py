"""The logprob gap FP8 rollout weights cost, against BF16 and float32, on the same tokens.

The trainer publishes blockwise FP8 (`weights.fp8`) when ``weightStore.fp8`` is on; these
CPUs cannot run SGLang's FP8 kernels (no AMX), so the gap is measured with our own
dequantised weights in the tiny torch model (float32 compute): the weight rounding is the
whole difference between the three. A Qwen2-shaped model whose linear layers are whole
128-blocks (hidden 256, 4 heads of 64, 2 KV heads), random weights with a sharpened output
layer (a near-uniform model would make any gap look small), scored on sequences sampled from
the float32 model itself, as rollouts are.

    .venv/bin/python bench/fp8_logprob_gap.py [--seeds 3]

Writes bench/results/fp8_logprob_gap.json (`_common.write_result`).
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
from _common import write_result

from kuberl.workloads.policy.tiny.model import (
    TinyConfig,
    TinyQwen2ForCausalLM,
    causal_mask,
    positions_of,
    token_logprobs,
)
from kuberl.workloads.weights import fp8

SHAPE = TinyConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)


SHARPEN = 16.0  # lm_head scale: the sampled tokens' mean probability is in the result (mean_token_prob)


def sample(model: TinyQwen2ForCausalLM, g: torch.Generator, batch: int, length: int) -> torch.Tensor:
    ids = torch.randint(3, SHAPE.vocab_size, (batch, 1), generator=g)
    with torch.no_grad():
        for _ in range(length - 1):
            valid = torch.ones_like(ids, dtype=torch.bool)
            logits = model(ids, positions_of(valid), causal_mask(valid))[:, -1].float()
            ids = torch.cat([ids, torch.multinomial(logits.softmax(-1), 1, generator=g)], dim=1)
    return ids


def measure(seed: int, batch: int = 8, length: int = 48) -> dict:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyQwen2ForCausalLM(SHAPE).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(SHARPEN)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ids = sample(model, g, batch, length)
    valid = torch.ones_like(ids, dtype=torch.bool)

    def logprobs(weights: dict[str, torch.Tensor]) -> torch.Tensor:
        model.load_state_dict({k: v.float() for k, v in weights.items()})
        with torch.no_grad():
            return token_logprobs(model, ids, valid)[:, 1:]

    quantised, kept = fp8.quantize_state_dict(state)
    fp32 = logprobs(state)
    bf16 = logprobs({k: v.bfloat16() for k, v in state.items()})
    # FP8 where the quantiser puts it, the rest as the engines get it (BF16).
    fp8_weights = {k: v if k not in kept else v.bfloat16() for k,
                   v in fp8.dequantize_state_dict(quantised, torch.float32).items()}
    fp8_lp = logprobs(fp8_weights)
    probs = fp32.exp()
    quantised_params = sum(v.numel() for k, v in state.items() if k not in kept)

    def gap(a: torch.Tensor, b: torch.Tensor) -> dict:
        d = (a - b).abs()
        return {"mean_abs": float(d.mean()), "max_abs": float(d.max()), "p99_abs": float(d.flatten().quantile(0.99))}

    return {"seed": seed, "tokens": int(fp32.numel()), "mean_token_prob": float(probs.mean()),
            "quantised_fraction_of_params": quantised_params / sum(v.numel() for v in state.values()),
            "bf16_vs_fp32": gap(bf16, fp32), "fp8_vs_fp32": gap(fp8_lp, fp32), "fp8_vs_bf16": gap(fp8_lp, bf16)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    runs = [measure(seed) for seed in range(args.seeds)]
    mean = lambda key: sum(r[key]["mean_abs"] for r in runs) / len(runs)  # noqa: E731
    result = {"machine": platform.processor() or platform.machine(), "shape": SHAPE.to_hf(), "runs": runs,
              "mean_abs": {k: mean(k) for k in ("bf16_vs_fp32", "fp8_vs_fp32", "fp8_vs_bf16")},
              "ratio_fp8_to_bf16_gap": mean("fp8_vs_fp32") / mean("bf16_vs_fp32")}
    out = write_result("fp8_logprob_gap", result)
    print(json.dumps(result["mean_abs"]), "ratio", round(result["ratio_fp8_to_bf16_gap"], 2), "->", out)


if __name__ == "__main__":
    main()
