"""Agents of one node fetching a version: each from the store (weightFetch perAgent) vs one
download per node and copies over the relay (perNode), the same run, alternating order.

What it measures: the bytes that went through the store (every S3 GET's body, counted by
each agent's client) and the wall time until every agent holds the version, checked. Both
sides verify every file's sha256 against the store's manifest. Here the store and the
agents share one loopback and two cores, so the wall time says what the sharing costs on a
node, not what it saves on a network whose store is the bottleneck; the bytes say that.

    .venv/bin/python bench/bench_node_fetch.py [--agents 4] [--shards 4] [--shard-mib 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import NatsServer, SeaweedS3, median, write_result
from bench_weights import make_files

from kuberl.workloads.buffer.admin import BufferConfig, create_job_streams
from kuberl.workloads.buffer.stream import JobBuffer
from kuberl.workloads.config import NODE_NAME_ENV
from kuberl.workloads.rollout.node_share import NodeShare
from kuberl.workloads.weights.s3 import s3_client
from kuberl.workloads.weights.stages import StageClock
from kuberl.workloads.weights.store import WeightStore


class CountingStore:
    """One agent's store client; counts the bytes its GETs brought."""

    def __init__(self, server: SeaweedS3, bucket: str):
        client = s3_client(server.endpoint, pool=32, aws_access_key_id=server.access_key,
                           aws_secret_access_key=server.secret_key, region_name="us-east-1")
        self.bytes = 0
        client.meta.events.register("after-call.s3.GetObject", self._count)
        self.store = WeightStore(client, bucket, "bench", file_workers=2)

    def _count(self, parsed, **_):
        self.bytes += int(parsed.get("ContentLength") or 0)


async def fetch_all(mode: str, version: int, agents: list[CountingStore], shares: list[NodeShare] | None,
                    root: Path) -> tuple[float, int, list[str]]:
    """Every agent fetches ``version`` at once; (wall seconds, store bytes, sources)."""
    before = sum(a.bytes for a in agents)
    started = time.perf_counter()

    def fetch_into(i: int, peer=None):
        return agents[i].store.fetch(version, root / f"{mode}-{i}" / f"v{version:08d}", clock=StageClock(), peer=peer)

    if shares is None:
        results = await asyncio.gather(*(asyncio.to_thread(fetch_into, i) for i in range(len(agents))))
        sources = ["store"] * len(results)
    else:
        pairs = await asyncio.gather(*(share.fetch(version, lambda peer, i=i: fetch_into(i, peer),
                                                   lambda got: got[1].version)
                                       for i, share in enumerate(shares)))
        sources = [source for _, source in pairs]
    wall = time.perf_counter() - started
    return wall, sum(a.bytes for a in agents) - before, sources


async def run(args, root: Path, nats_url: str, server: SeaweedS3) -> dict:
    src = root / "src"
    make_files(src, args.shards, args.shard_mib)
    total = sum(p.stat().st_size for p in src.iterdir())
    publisher = CountingStore(server, "bench")
    versions = list(range(1, 2 * args.rounds + 1))
    for v in versions:
        publisher.store.publish(v, src)
    await create_job_streams(nats_url, "default", "bench", BufferConfig())
    buf = await JobBuffer.open(nats_url, "default", "bench", BufferConfig())
    os.environ[NODE_NAME_ENV] = "bench-node"
    per_agent = [CountingStore(server, "bench") for _ in range(args.agents)]
    per_node = [CountingStore(server, "bench") for _ in range(args.agents)]
    shares = []
    for i in range(args.agents):
        (root / f"perNode-{i}").mkdir(parents=True)
        shares.append(NodeShare(buf.fetch_claims, root / f"perNode-{i}", f"agent-{i}"))
        await shares[-1].start()
    rounds = {"perAgent": [], "perNode": []}
    try:
        for r in range(args.rounds):  # alternate who goes first; each mode a fresh version
            order = ["perAgent", "perNode"] if r % 2 == 0 else ["perNode", "perAgent"]
            for k, mode in enumerate(order):
                version = versions[2 * r + k]
                agents, sh = (per_agent, None) if mode == "perAgent" else (per_node, shares)
                rounds[mode].append(await fetch_all(mode, version, agents, sh, root))
                for i in range(args.agents):
                    shutil.rmtree(root / f"{mode}-{i}" / f"v{version:08d}", ignore_errors=True)
    finally:
        for share in shares:
            await share.stop()
        await buf.close()

    def summary(rs):
        return {"wall_s": [round(w, 3) for w, _, _ in rs], "median_wall_s": round(median([w for w, _, _ in rs]), 3),
                "store_bytes_per_version": [b for _, b, _ in rs], "sources": [s for _, _, s in rs]}

    res = {"params": vars(args) | {"version_bytes": total}, "perAgent": summary(rounds["perAgent"]),
           "perNode": summary(rounds["perNode"])}
    res["store_bytes_ratio"] = round(median([b for _, b,
                                             _ in rounds["perNode"]]) / median([b for _, b, _ in rounds["perAgent"]]),
                                     4)
    res["wall_ratio"] = round(res["perNode"]["median_wall_s"] / res["perAgent"]["median_wall_s"], 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--shard-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kuberl-bench-node-fetch-"))
    (root / "nats").mkdir()
    (root / "weed").mkdir()
    nats, weed = NatsServer(root / "nats"), SeaweedS3(root / "weed")
    nats.start()
    weed.start()
    try:
        s3_client(weed.endpoint, aws_access_key_id=weed.access_key, aws_secret_access_key=weed.secret_key,
                  region_name="us-east-1").create_bucket(Bucket="bench")
        res = asyncio.run(run(args, root, nats.url, weed))
    finally:
        weed.stop()
        nats.stop()
        shutil.rmtree(root, ignore_errors=True)
    out = write_result("bench_node_fetch", res)
    print(f"{args.agents} agents on one node, a version of {args.shards} x {args.shard_mib} MiB, {args.rounds} rounds "
          f"each")
    for mode in ("perAgent", "perNode"):
        v = res[mode]
        print(f"  {mode:8s}: {v['median_wall_s']:.2f} s until every agent holds it; store bytes "
              f"{v['store_bytes_per_version']}")
    print(f"  perNode/perAgent: store bytes {res['store_bytes_ratio']:.3f}x, wall {res['wall_ratio']:.2f}x -> {out}")


if __name__ == "__main__":
    main()
