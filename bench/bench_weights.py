"""Weight publish + fetch vs raw boto3 multipart on the same SeaweedFS.

Both sides move the same files with the same TransferConfig (parallel multipart upload,
ranged parallel GETs) and the same number of file threads. Ours adds what makes a version
safe: sha256 of every file on both sides, the manifest written last, a listing to check the
version is new, and verify-then-rename on fetch. Target: ratio ≥ 0.7.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import SeaweedS3, median, write_result

from kuberl.workloads.weights.store import (
    WeightStore,
    default_transfer_config,
    s3_client,
)

MiB = 1024 * 1024


def make_files(src: Path, shards: int, shard_mib: int) -> None:
    src.mkdir(parents=True)
    for i in range(shards):
        (src / f"model-{i + 1:05d}-of-{shards:05d}.safetensors").write_bytes(os.urandom(shard_mib * MiB))
    (src / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')


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
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="kuberl-bench-weights-"))
    server = SeaweedS3(root / "weed")
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
    res["target"] = 0.7
    res["pass"] = res["ratio"] >= res["target"]
    out = write_result("bench_weights", res)
    print(f"{args.shards} shards x {args.shard_mib} MiB (+config.json), {args.rounds} rounds")
    for k in ("raw", "ours"):
        v = res[k]
        print(f"  {k:4s}: {v['MBps']:7.1f} MB/s publish+fetch; publish {v['publish_MBps']:.1f} MB/s, "
              f"fetch {v['fetch_MBps']:.1f} MB/s")
    print(f"  ratio ours/raw = {res['ratio']:.3f} (target >= 0.7: {'PASS' if res['pass'] else 'FAIL'}) -> {out}")


if __name__ == "__main__":
    main()
