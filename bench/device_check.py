"""GPU device check (issue 8): megatron backend step throughput/MFU and FP8 quantisation speed.

Run by bench/device_check.sh on a lent H200 (Python 3.12, torch 2.11 + CUDA 13, megatron-core
0.16.1 carried as a wheel). One process, world size 1 (NCCL), no torchrun.

1. ``megatron_step``: `MegatronPolicy` (bf16 under Float16Module, TP=1) built from a random
   Qwen2-shaped config of ~0.5B parameters (Qwen2.5-0.5B's shape), timed over full
   training steps (forward, vocab-parallel logprobs, kuberl-style token-mean loss,
   backward, clip, AdamW). Model FLOPs per token = 6·N_matmul + 12·L·h·s (causal attention
   counted in full, PaLM's convention); MFU against the H200's dense bf16 peak (989 TFLOP/s
   datasheet) and against the ~790 TFLOP/s an 8k bf16 GEMM reaches there.
2. ``fp8``: `kuberl.workloads.weights.fp8.quantize_blockwise` on bf16 weights of several shapes and
   `quantize_state_dict` on the whole 0.5B model (the per-update re-quantisation a
   rollout sync pays), as effective bandwidth (bf16 read + fp8 written + scales) against a
   device-to-device copy of the same bytes measured in the same run.

``--tiny --device cpu`` runs the same code on a toy shape on CPU (gloo): a smoke test of
the script itself, numbers meaningless.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
import time
from pathlib import Path

import torch

QWEN2_0_5B = {  # Qwen2.5-0.5B's shape; weights are random
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
    "attention_bias": True, "hidden_act": "silu",
}
TINY = {**QWEN2_0_5B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 512}
H200_BF16_DENSE_PEAK = 989e12
H200_BF16_GEMM_MEASURED = 790e12  # 8192^3 bf16 matmul through PyTorch on this machine kind


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, *, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def init_dist(device: torch.device) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def matmul_params(cfg: dict) -> int:
    """Parameters that take part in GEMMs per token (lm_head included, embedding lookup not)."""
    h, i, L, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    per_layer = h * h + 2 * h * kv + h * h + 3 * h * i  # q, k, v, o, gate/up/down
    return L * per_layer + v * h


def megatron_step(cfg: dict, device: torch.device, batch: int, seq: int, iters: int) -> dict:
    from kuberl.workloads.policy.megatron.policy import MegatronPolicy

    init_dist(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    policy = MegatronPolicy(cfg, tensor_parallel=1, dtype=dtype, learning_rate=1e-5)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in policy.core.parameters())
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, cfg["vocab_size"], (batch, seq), generator=g).to(device)
    mask = torch.ones(batch, seq - 1, device=device)

    def loss_fn(logprobs: torch.Tensor) -> torch.Tensor:  # token-mean policy-gradient-shaped loss
        return -(logprobs * mask).sum() / mask.sum()

    stats: dict = {}

    def step():
        stats.update(policy.train_step(ids, loss_fn))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = timed(step, device, warmup=2, iters=iters)
    dt = median(times)
    tokens = batch * seq
    L, h = cfg["num_hidden_layers"], cfg["hidden_size"]
    flops_per_token = 6 * matmul_params(cfg) + 12 * L * h * seq
    achieved = flops_per_token * tokens / dt
    out = {
        "model": {k: cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                      "num_key_value_heads", "vocab_size", "tie_word_embeddings")},
        "parameters": n_params, "dtype": str(dtype).removeprefix("torch."), "batch": batch, "seq": seq,
        "build_seconds": round(build_s, 2), "step_seconds_median": round(dt, 4),
        "step_seconds": [round(t, 4) for t in times],
        "tokens_per_second": round(tokens / dt, 1), "model_flops_per_token": flops_per_token,
        "tflops_per_second": round(achieved / 1e12, 1), "last_loss": stats.get("loss"),
    }
    if device.type == "cuda":
        out["mfu_vs_datasheet_989"] = round(achieved / H200_BF16_DENSE_PEAK, 4)
        out["mfu_vs_measured_gemm_790"] = round(achieved / H200_BF16_GEMM_MEASURED, 4)
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def copy_bandwidth(device: torch.device, nbytes: int, iters: int) -> float:
    """Device-to-device copy, counting bytes read + written (as the 4.2-4.3 TB/s figure does)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = median(timed(lambda: dst.copy_(src), device, warmup=3, iters=iters))
    return 2 * nbytes / t


def fp8_throughput(cfg: dict, device: torch.device, iters: int, copy_bw: float, tiny: bool) -> dict:
    from kuberl.workloads.weights import fp8

    shapes = [(896, 4864), (4864, 896), (3584, 18944), (8192, 8192)] if not tiny else [(256, 384), (512, 512)]
    rows = []
    for shape in shapes:
        w = torch.randn(*shape, device=device, dtype=torch.bfloat16)
        t = median(timed(lambda w=w: fp8.quantize_blockwise(w), device, warmup=2, iters=iters))
        q, s = fp8.quantize_blockwise(w)
        moved = w.numel() * 2 + q.numel() * 1 + s.numel() * 4
        err_ok = bool((fp8.dequantize_blockwise(q, s).float() - w.float()).abs().le(fp8.error_bound(w, s)).all())
        rows.append({"shape": list(shape), "seconds": round(t, 6), "bytes_moved": moved,
                     "effective_tb_per_s": round(moved / t / 1e12, 4),
                     "fraction_of_copy": round(moved / t / copy_bw, 4),
                     "within_error_bound": err_ok})
        del w, q, s
    # The whole model's re-quantisation, as a rollout sync pays it on every update.
    state = {}
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        for name, shape in (("self_attn.q_proj", (h, h)), ("self_attn.k_proj", (kv, h)), ("self_attn.v_proj", (kv, h)),
                            ("self_attn.o_proj", (h, h)), ("mlp.gate_proj", (i, h)), ("mlp.up_proj", (i, h)),
                            ("mlp.down_proj", (h, i))):
            state[p + name + ".weight"] = torch.randn(*shape, device=device, dtype=torch.bfloat16)
    state["model.embed_tokens.weight"] = torch.randn(cfg["vocab_size"], h, device=device, dtype=torch.bfloat16)
    t = median(timed(lambda: fp8.quantize_state_dict(state), device, warmup=1, iters=max(3, iters // 2)))
    new, kept = fp8.quantize_state_dict(state)
    q_bytes = sum(v.numel() * v.element_size() for k, v in state.items() if k not in kept)
    out_bytes = sum(v.numel() * v.element_size() for k, v in new.items() if k not in kept)
    return {
        "copy_tb_per_s": round(copy_bw / 1e12, 3),
        "quantize_blockwise": rows,
        "quantize_state_dict": {"tensors": len(state), "quantised": len(state) - len(kept),
                                "kept_high_precision": len(kept),
                                "seconds": round(t, 4), "bf16_bytes_quantised": q_bytes,
                                "effective_tb_per_s": round((q_bytes + out_bytes) / t / 1e12, 4),
                                "fraction_of_copy": round((q_bytes + out_bytes) / t / copy_bw, 4)},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="toy shapes (a smoke test of this script)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--skip", default="", help="comma list: megatron,fp8")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = TINY if args.tiny else QWEN2_0_5B
    if args.tiny:
        args.batch, args.seq, args.iters = 2, 32, 2
    doc: dict = {
        "benchmark": "device_check",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"python": platform.python_version(), "torch": torch.__version__, "device": args.device,
                 "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                 "cuda": torch.version.cuda},
    }
    skip = set(filter(None, args.skip.split(",")))
    try:
        import megatron.core

        doc["host"]["megatron_core"] = megatron.core.__version__
    except ImportError as e:
        doc["host"]["megatron_core"] = f"missing: {e}"
    if "fp8" not in skip:
        t0 = time.perf_counter()
        bw = copy_bandwidth(device, (1 << 30) if not args.tiny else (1 << 20), iters=args.iters)
        try:
            doc["fp8"] = fp8_throughput(cfg, device, args.iters, bw, args.tiny)
        except Exception as e:  # noqa: BLE001 - report, keep going: the other half is still worth having
            doc["fp8"] = {"error": f"{type(e).__name__}: {e}", "copy_tb_per_s": round(bw / 1e12, 3)}
        doc["fp8"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({"fp8": doc["fp8"]}), flush=True)
    if "megatron" not in skip:
        t0 = time.perf_counter()
        try:
            doc["megatron_step"] = megatron_step(cfg, device, args.batch, args.seq, args.iters)
        except Exception as e:  # noqa: BLE001 - reported in the JSON, with the traceback on stderr
            import traceback

            traceback.print_exc()
            doc["megatron_step"] = {"error": f"{type(e).__name__}: {e}"}
        doc["megatron_step"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(doc, indent=1)
    print(text, flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
