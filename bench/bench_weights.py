"""Weight publish + fetch vs raw boto3 multipart on the same SeaweedFS; a delta version vs a whole one.

Whole versions: both sides move the same files with the same TransferConfig (parallel
multipart upload, ranged parallel GETs) and the same number of file threads. Ours adds what
makes a version safe: sha256 of every file on both sides, the manifest written last, a
listing to check the version is new, and verify-then-rename on fetch. Target: ratio ≥ 0.85.

Delta versions (weightStore.fullVersionEvery > 1): BF16 shards of normal weights, then the
same shards after an optimizer-like step that moves `--delta-share` of the weights by about
5 %. The new version is synced whole (publish + fetch) and as a delta against the first
(publish with the first as parent, fetch by a holder of the first), alternating which goes
first. Targets (issue 15): the delta moves ≤ 10 % of the whole version's bytes and takes
≤ 0.3× its sync time.

FP8 versions (weightStore.fp8): a Llama-shaped float32 state dict (`--fp8-layers` layers of
hidden `--fp8-hidden`) published by the trainer's own path (`publish_policy`: cast or blockwise-FP8
quantise on the CPU, serialise, upload) and fetched, in BF16 and in FP8, alternating which
goes first. Target (issue 15): the FP8 sync takes ≤ 0.6× the BF16 sync's time.

    .venv/bin/python bench/bench_weights.py [--shards 4] [--shard-mib 64] [--rounds 3] [--delta-share 0.03] \
        [--fp8-layers 2] [--fp8-hidden 2048]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import SeaweedS3, median, write_result
from bench_weight_deltas import bf16_bytes

import torch

from kuberl.workloads.weights.manifest import local_version
from kuberl.workloads.weights.s3 import s3_client
from kuberl.workloads.weights.store import WeightStore, default_transfer_config
from kuberl.workloads.weights.sync import publish_policy

MiB = 1024 * 1024


def make_files(src: Path, shards: int, shard_mib: int) -> None:
    src.mkdir(parents=True)
    for i in range(shards):
        (src / f"model-{i + 1:05d}-of-{shards:05d}.safetensors").write_bytes(os.urandom(shard_mib * MiB))
    (src / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')


def make_step_pair(before: Path, after: Path, shards: int, shard_mib: int, share: float, seed: int) -> float:
    """BF16 shards before and after a step that moves ``share`` of the weights; the share of bytes that changed."""
    rng = np.random.default_rng(seed)
    before.mkdir(parents=True)
    after.mkdir(parents=True)
    changed = 0
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        weights = (0.02 * rng.standard_normal(shard_mib * MiB // 2)).astype(np.float32)
        old = bf16_bytes(weights)
        which = rng.random(weights.size) < share
        weights[which] *= 1 + 0.05 * rng.standard_normal(int(which.sum())).astype(np.float32)
        new = bf16_bytes(weights)
        changed += int(np.count_nonzero(np.frombuffer(old, np.uint8) != np.frombuffer(new, np.uint8)))
        (before / name).write_bytes(old)
        (after / name).write_bytes(new)
    for d in (before, after):
        (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    return changed / (shards * shard_mib * MiB)


def run_step_sync(store: WeightStore, parent_dir: Path, new_dir: Path, dst: Path, version: int,
                  parent: int | None) -> tuple[float, float, int]:
    """Sync ``new_dir`` as ``version``: whole (parent None), or as a delta against ``parent``
    (published from ``parent_dir``, which the fetcher holds). (publish s, fetch s, bytes stored)."""
    held = local_version(parent_dir) if parent is not None else None
    t0 = time.perf_counter()
    manifest = store.publish(version, new_dir, parent=held)
    t1 = time.perf_counter()
    store.fetch(version, dst, have=[held] if held else [])
    t2 = time.perf_counter()
    for f in new_dir.glob("*.safetensors"):  # the fetch checked sha256 already; this checks the bench
        assert (dst / f.name).read_bytes() == f.read_bytes(), f.name
    return t1 - t0, t2 - t1, manifest.stored_bytes


def llama_state(layers: int, hidden: int = 2048, vocab: int = 1024) -> dict[str, torch.Tensor]:
    """A Llama-shaped float32 state dict (HF names): what the trainer hands `publish_policy`. The
    vocabulary is small so that, as in a 7 B model, about 4 % of the weights stay BF16 under FP8."""
    gen = torch.Generator().manual_seed(0)
    intermediate = int(2.75 * hidden) // 128 * 128  # Llama's ratio, in whole FP8 blocks
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,)}
        shapes |= {p + f"self_attn.{n}.weight": (hidden, hidden) for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
        shapes |= {p + "mlp.gate_proj.weight": (intermediate, hidden), p + "mlp.up_proj.weight": (intermediate, hidden),
                   p + "mlp.down_proj.weight": (hidden, intermediate)}
    return {name: 0.02 * torch.randn(shape, generator=gen) for name, shape in shapes.items()}


def run_policy_sync(store: WeightStore, state: dict[str, torch.Tensor], dst: Path, version: int,
                    use_fp8: bool) -> tuple[float, float, int]:
    """The trainer's publish (cast or quantise, serialise, upload) and a fetch: (publish s, fetch s, bytes)."""
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    t0 = time.perf_counter()
    published = publish_policy(store, state, config, version, use_fp8, dtype="bfloat16")
    t1 = time.perf_counter()
    store.fetch(version, dst)
    return t1 - t0, time.perf_counter() - t1, published.bytes


def run_raw(client, bucket: str, src: Path, dst: Path, round_: int, workers: int) -> tuple[float, float]:
    cfg = default_transfer_config()
    files = sorted(src.iterdir())
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: client.upload_file(str(p), bucket, f"raw/{round_}/{p.name}", Config=cfg), files))
    t1 = time.perf_counter()
    dst.mkdir(parents=True)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: client.download_file(bucket, f"raw/{round_}/{p.name}", str(dst / p.name), Config=cfg),
                      files))
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def run_ours(store: WeightStore, src: Path, dst: Path, round_: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    store.publish(round_, src)
    t1 = time.perf_counter()
    store.fetch(round_, dst)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--shard-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4, help="files in parallel (both sides)")
    ap.add_argument("--delta-share", type=float, default=0.03, help="share of the weights one step moves")
    ap.add_argument("--fp8-layers", type=int, default=2, help="layers of the Llama-shaped model synced in BF16 and FP8")
    ap.add_argument("--fp8-hidden", type=int, default=2048, help="its hidden size (a multiple of 128)")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="kuberl-bench-weights-"))
    server = SeaweedS3(root / "weed",
                       volume_size_mb=2048)  # no volume growth inside a timed round (256 MB: about one in two)
    server.start()
    try:
        client = s3_client(server.endpoint, pool=64, aws_access_key_id=server.access_key,
                           aws_secret_access_key=server.secret_key, region_name="us-east-1")
        client.create_bucket(Bucket="bench")
        store = WeightStore(client, "bench", "ours", file_workers=args.workers)
        src = root / "src"
        make_files(src, args.shards, args.shard_mib)
        total = sum(p.stat().st_size for p in src.iterdir())
        raw, ours = [], []
        for r in range(args.rounds):  # alternate who goes first
            order = [("raw", raw), ("ours", ours)] if r % 2 else [("ours", ours), ("raw", raw)]
            for name, acc in order:
                dst = root / f"dst-{name}-{r}"
                if name == "raw":
                    acc.append(run_raw(client, "bench", src, dst, r, args.workers))
                else:
                    acc.append(run_ours(store, src, dst, r))
                shutil.rmtree(dst)
        # Delta versions: the parent published once, then the step's version whole and as a delta, alternating.
        before, after = root / "before", root / "after"
        bytes_changed = make_step_pair(before, after, args.shards, args.shard_mib, args.delta_share, seed=1)
        step_bytes = sum(p.stat().st_size for p in after.iterdir())
        store.publish(1000, before)  # writes before/manifest.json: a version the fetcher holds
        whole, deltas = [], []
        for r in range(args.rounds):
            order = [("whole", whole), ("delta", deltas)] if r % 2 else [("delta", deltas), ("whole", whole)]
            for name, acc in order:
                dst = root / f"dst-step-{name}-{r}"
                version = 1001 + 2 * r + (name == "delta")
                acc.append(run_step_sync(store, before, after, dst, version, parent=1000 if name == "delta" else None))
                shutil.rmtree(dst)
        # FP8 versions against BF16 ones, from the same float32 weights, alternating.
        state = llama_state(args.fp8_layers, args.fp8_hidden)
        bf16, fp8 = [], []
        for r in range(args.rounds):
            order = [("bf16", bf16), ("fp8", fp8)] if r % 2 else [("fp8", fp8), ("bf16", bf16)]
            for name, acc in order:
                dst = root / f"dst-{name}-{r}"
                acc.append(run_policy_sync(store, state, dst, 2001 + 2 * r + (name == "fp8"), use_fp8=name == "fp8"))
                shutil.rmtree(dst)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    def summary(times):
        return {"rounds_s": times,
                "publish_MBps": total / 1e6 / median([p for p, _ in times]),
                "fetch_MBps": total / 1e6 / median([f for _, f in times]),
                "MBps": total / 1e6 / median([p + f for p, f in times])}

    res = {"params": vars(args) | {"total_bytes": total}, "raw": summary(raw), "ours": summary(ours)}
    res["ratio"] = res["ours"]["MBps"] / res["raw"]["MBps"]
    res["target"] = 0.85
    res["pass"] = res["ratio"] >= res["target"]

    def sync_s(times):
        return median([p + f for p, f, _ in times])

    res["delta"] = {
        "weights_moved": args.delta_share, "bytes_changed": round(bytes_changed, 4), "version_bytes": step_bytes,
        "whole": {"rounds_s": [[p, f] for p, f, _ in whole], "sync_s": round(sync_s(whole), 3),
                  "stored_bytes": whole[0][2]},
        "delta": {"rounds_s": [[p, f] for p, f, _ in deltas], "sync_s": round(sync_s(deltas), 3),
                  "stored_bytes": deltas[0][2]},
    }
    res["delta"]["bytes_ratio"] = round(deltas[0][2] / whole[0][2], 4)
    res["delta"]["time_ratio"] = round(sync_s(deltas) / sync_s(whole), 3)
    res["delta"]["targets"] = {"bytes_ratio": 0.10, "time_ratio": 0.30}
    res["delta"]["pass"] = res["delta"]["bytes_ratio"] <= 0.10 and res["delta"]["time_ratio"] <= 0.30
    res["fp8"] = {
        "params": sum(t.numel() for t in state.values()),
        "bf16": {"rounds_s": [[p, f] for p, f, _ in bf16], "sync_s": round(sync_s(bf16), 3), "bytes": bf16[0][2]},
        "fp8": {"rounds_s": [[p, f] for p, f, _ in fp8], "sync_s": round(sync_s(fp8), 3), "bytes": fp8[0][2]},
    }
    res["fp8"]["bytes_ratio"] = round(fp8[0][2] / bf16[0][2], 4)
    res["fp8"]["time_ratio"] = round(sync_s(fp8) / sync_s(bf16), 3)
    res["fp8"]["target"] = {"time_ratio": 0.6}
    res["fp8"]["pass"] = res["fp8"]["time_ratio"] <= 0.6
    out = write_result("bench_weights", res)
    print(f"{args.shards} shards x {args.shard_mib} MiB (+config.json), {args.rounds} rounds")
    for k in ("raw", "ours"):
        v = res[k]
        print(f"  {k:4s}: {v['MBps']:7.1f} MB/s publish+fetch; publish {v['publish_MBps']:.1f} MB/s, "
              f"fetch {v['fetch_MBps']:.1f} MB/s")
    print(f"  ratio ours/raw = {res['ratio']:.3f} (target >= 0.85: {'PASS' if res['pass'] else 'FAIL'})")
    d = res["delta"]
    print(f"  a step moving {args.delta_share:.0%} of the weights ({d['bytes_changed']:.1%} of bytes): whole sync "
          f"{d['whole']['sync_s']:.2f} s, "
          f"delta {d['delta']['sync_s']:.2f} s ({d['time_ratio']:.2f}x, target <= 0.3), stored {d['bytes_ratio']:.1%} "
          f"of the whole "
          f"(target <= 10 %)")
    f = res["fp8"]
    print(f"  {f['params'] / 1e6:.0f} M parameters published and fetched: BF16 {f['bf16']['sync_s']:.2f} s, FP8 "
          f"{f['fp8']['sync_s']:.2f} s "
          f"({f['time_ratio']:.2f}x, target <= 0.6), {f['bytes_ratio']:.1%} of the bytes -> {out}")


if __name__ == "__main__":
    main()
