"""Train/inference logprob mismatch: SGLang's behaviour logprobs vs the trainer backends'.

On identical weights, SGLang samples completions (temperature 1, full vocabulary) and
reports the logprob of each sampled token; the tiny torch backend
(`kuberl.workloads.policy.tiny.model.token_logprobs`) and the megatron-core backend
(`MegatronPolicy.token_logprobs`, TP=1 over gloo in this process) score the same tokens.
Reported per server dtype and weight set: mean/max absolute difference, and the mean
entropy of the sampling distribution (a near-uniform model makes any mismatch look small,
so a sharper weight set is measured too).

    .venv/bin/python bench/logprob_mismatch.py [--dtypes float32,bfloat16] [--samples 32]

Needs the SGLang venv (e2e/sglang/setup.sh). Writes bench/results/logprob_mismatch.json
(under $KUBERL_BENCH_RESULTS instead for the smoke run).
Target (issue 8): mean abs < 1e-3 in float32.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

from kuberl.workloads.engines.base import GenerationRequest
from kuberl.workloads.engines.sglang.client import SGLangClient
from kuberl.workloads.engines.sglang.engine import SGLangEngine
from kuberl.workloads.engines.sglang.launcher import ServerConfig, SGLangServer
from kuberl.workloads.policy.tiny.checkpoint import write_builtin_tiny
from kuberl.workloads.policy.tiny.model import seeded_model, token_logprobs
from kuberl.workloads.policy.sources import local_model_dir
from kuberl.workloads.policy.tokenizer import Tokenizer

from _common import write_result

PROMPTS = ["12+7=", "3*(4+5)=", "what is 9-2?", "ab", "100/4="]


def weight_sets(seed: int) -> dict[str, torch.nn.Module]:
    """``seeded``: the tiny model as initialised (near-uniform next-token distribution);
    ``sharp``: the same with embeddings x4 and lm_head x12, so the distribution is peaked
    and logits are large — where precision differences show."""
    base = seeded_model(seed).eval()
    sharp = seeded_model(seed).eval()
    with torch.no_grad():
        sharp.model.embed_tokens.weight.mul_(4.0)
        sharp.lm_head.weight.mul_(12.0)
    return {"seeded": base, "sharp": sharp}


def megatron_scorer():
    """A TP=1 MegatronPolicy in this process (gloo, world size 1), or None if unavailable."""
    try:
        import torch.distributed as dist

        from kuberl.workloads.policy.megatron.policy import MegatronPolicy
    except ImportError as e:
        print(f"megatron-core not available: {e}", file=sys.stderr)
        return None
    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    policies: dict[int, MegatronPolicy] = {}

    def score(model, ids: torch.Tensor) -> torch.Tensor:
        key = id(model)
        if key not in policies:
            hf = model.config.to_hf() | {"attention_bias": True}
            policies[key] = MegatronPolicy(hf, tensor_parallel=1, dtype=torch.float32)
            policies[key].load_hf_state({k: v.detach().clone() for k, v in model.state_dict().items()})
        with torch.no_grad():
            return policies[key].token_logprobs(ids)[0]  # [seq-1]: token t given < t

    return score


def entropy(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        valid = torch.ones_like(ids, dtype=torch.bool)
        from kuberl.workloads.policy.tiny.model import causal_mask, positions_of

        logits = model(ids, positions_of(valid), causal_mask(valid)).float()
        logp = torch.log_softmax(logits, -1)
        return float(-(logp.exp() * logp).sum(-1).mean())


def measure(engine: SGLangEngine, models: dict, samples: int, max_new: int, megatron) -> dict:
    tok = Tokenizer.from_pretrained(local_model_dir("builtin://tiny"))
    out = {}
    for name, model in models.items():
        engine.load_state_dict(model.state_dict(), version=len(out) + 1)
        per_prompt = max(1, samples // len(PROMPTS))
        reqs = [GenerationRequest(tok.encode_prompt({"prompt": p}), n=per_prompt, max_new_tokens=max_new,
                                  stop_ids=()) for p in PROMPTS]
        t0 = time.perf_counter()
        groups = engine.generate(reqs)
        gen_s = time.perf_counter() - t0
        d_torch, d_meg, ents = [], [], []
        for req, group in zip(reqs, groups, strict=True):
            for c in group:
                ids = torch.tensor([list(req.prompt_ids) + c.token_ids])
                p = len(req.prompt_ids)
                got = torch.tensor(c.logprobs, dtype=torch.float64)
                with torch.no_grad():
                    ref = token_logprobs(model, ids, torch.ones_like(ids, dtype=torch.bool))[0, p:].double()
                d_torch.append((got - ref).abs())
                if megatron is not None:
                    d_meg.append((got - megatron(model, ids)[p - 1:].double()).abs())
                ents.append(entropy(model, ids))
        dt = torch.cat(d_torch)
        row = {"tokens": int(dt.numel()), "generate_seconds": round(gen_s, 3),
               "mean_entropy_nats": round(sum(ents) / len(ents), 4),
               "vs_torch": {"mean_abs": float(dt.mean()), "max_abs": float(dt.max())}}
        if d_meg:
            dm = torch.cat(d_meg)
            row["vs_megatron_tp1"] = {"mean_abs": float(dm.mean()), "max_abs": float(dm.max())}
        out[name] = row
        print(f"  {name}: {json.dumps(row)}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--no-megatron", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    megatron = None if args.no_megatron else megatron_scorer()
    models = weight_sets(args.seed)
    with tempfile.TemporaryDirectory(prefix="kuberl-mismatch-") as tmp:
        results = measure_servers(Path(tmp), models, args, megatron)
    f32 = results.get("float32", {})
    out = write_result("logprob_mismatch", {
        "torch": torch.__version__,
        "what": "abs(SGLang 0.5.23 sampled-token logprob - trainer backend logprob of the same token), same weights, "
                "temperature 1, server --device cpu --attention-backend torch_native; trainer side float32",
        "target": {"float32_mean_abs_below": 1e-3},
        "model": models["seeded"].config.to_hf(),
        "results": results,
        "float32_meets_target": all(r["vs_torch"]["mean_abs"] < 1e-3 for r in f32.values()
                                    if isinstance(r, dict) and "vs_torch" in r) if f32 else None,
    })
    print(f"wrote {out}")
    return 0


def measure_servers(work: Path, models: dict, args, megatron) -> dict:
    """One SGLang server per dtype, each on the seeded weights, measured against both backends."""
    # A whole HF checkpoint, tokenizer included: the server loads it before any weights arrive.
    write_builtin_tiny(work / "init", seed=args.seed)
    results: dict = {}
    for dtype in args.dtypes.split(","):
        server = SGLangServer(ServerConfig(model_path=str(work / "init"), dtype=dtype, random_seed=0,
                                           weight_version="0"),
                              log_path=work / f"server-{dtype}.log")
        with server:
            print(f"sglang {dtype}: up in {server.startup_seconds:.1f}s", flush=True)
            engine = SGLangEngine(SGLangClient(server.url, liveness=server.check_alive),
                                  scratch_dir=work / f"w-{dtype}")
            results[dtype] = {"server_startup_seconds": round(server.startup_seconds, 1),
                              **measure(engine, models, args.samples, args.max_new_tokens, megatron)}
            engine.close()
    return results


if __name__ == "__main__":
    sys.exit(main())
