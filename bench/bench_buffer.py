"""Buffer throughput (publish + consume, acked) vs raw nats-py JetStream, same payload size.

Both sides use one JetStream file-store stream on the same nats-server, pipelined async
publishes with acks awaited, and pull fetches of the same batch size with explicit acks.
Ours also encodes/decodes the trajectory codec, sets Nats-Msg-Id, de-duplicates and applies
the staleness policy — the overhead being measured. Target: ratio ≥ 0.8.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import nats
import numpy as np
from _common import NatsServer, median, write_result
from nats.js import api

from kuberl.workloads.buffer.admin import BufferConfig, create_job_streams
from kuberl.workloads.buffer.records import Trajectory, encode_trajectory
from kuberl.workloads.buffer.stream import JobBuffer


def make_trajs(n: int, tokens: int, round_: int) -> list[Trajectory]:
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 150_000, tokens)
    lp = -rng.random(tokens).astype(np.float32)
    mask = np.ones(tokens, np.uint8)
    return [Trajectory(f"r{round_}-s{i}", f"p{i // 8}", f"g{i // 8}", 0, toks, lp, mask, 1.0) for i in range(n)]


async def run_raw(url: str, payload: bytes, n: int, batch: int, round_: int) -> tuple[float, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    stream, subject = f"raw{round_}", f"raw.{round_}"
    await js.add_stream(name=stream, subjects=[subject], retention=api.RetentionPolicy.WORK_QUEUE,
                        storage=api.StorageType.FILE)
    t0 = time.perf_counter()
    futs = [await js.publish_async(subject, payload, stream=stream) for _ in range(n)]
    for f in futs:
        await f
    t1 = time.perf_counter()
    sub = await js.pull_subscribe(subject, durable="c", stream=stream,
                                  config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=-1))
    got = 0
    while got < n:
        msgs = await sub.fetch(min(batch, n - got), timeout=5)
        for m in msgs:
            _ = m.data
            await m.ack()
        await nc.flush()
        got += len(msgs)
    t2 = time.perf_counter()
    await js.delete_stream(stream)
    await nc.close()
    return t1 - t0, t2 - t1


async def run_ours(url: str, trajs: list[Trajectory], batch: int, round_: int) -> tuple[float, float]:
    # The operator's part, untimed: processes never create the streams (JobBuffer.open waits for them).
    await create_job_streams(url, "bench", f"ours-{round_}", BufferConfig())
    buf = await JobBuffer.open(url, "bench", f"ours-{round_}", BufferConfig())
    t0 = time.perf_counter()
    await buf.publish_trajectories(trajs)  # one pipeline, as the raw side does
    t1 = time.perf_counter()
    consumer = await buf.trajectory_consumer()
    got = 0
    while got < len(trajs):
        b = await consumer.fetch(min(batch, len(trajs) - got), current_version=0, timeout=5)
        await b.ack()
        got += len(b)
    t2 = time.perf_counter()
    await buf.close()
    return t1 - t0, t2 - t1


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per trajectory (9 bytes each)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="kuberl-bench-nats-") as root:
        server = NatsServer(Path(root))
        server.start()
        try:
            payload_size = len(encode_trajectory(make_trajs(1, args.tokens, 0)[0]))
            raw_payload = np.random.default_rng(1).bytes(payload_size)
            raw, ours = [], []
            for r in range(args.rounds):  # alternate who goes first, so warm-up and background load hit both alike
                trajs = make_trajs(args.messages, args.tokens, r)
                if r % 2:
                    raw.append(await run_raw(server.url, raw_payload, args.messages, args.batch, r))
                    ours.append(await run_ours(server.url, trajs, args.batch, r))
                else:
                    ours.append(await run_ours(server.url, trajs, args.batch, r))
                    raw.append(await run_raw(server.url, raw_payload, args.messages, args.batch, r))
        finally:
            server.stop()

    def rate(times):
        return args.messages / median([p + c for p, c in times])

    res = {
        "params": vars(args) | {"payload_bytes": payload_size},
        "raw": {"rounds_s": raw, "msgs_per_s": rate(raw),
                "publish_msgs_per_s": args.messages / median([p for p, _ in raw]),
                "consume_msgs_per_s": args.messages / median([c for _, c in raw])},
        "ours": {"rounds_s": ours, "msgs_per_s": rate(ours),
                 "publish_msgs_per_s": args.messages / median([p for p, _ in ours]),
                 "consume_msgs_per_s": args.messages / median([c for _, c in ours])},
    }
    res["ratio"] = res["ours"]["msgs_per_s"] / res["raw"]["msgs_per_s"]
    res["target"] = 0.8
    res["pass"] = res["ratio"] >= res["target"]
    out = write_result("bench_buffer", res)
    mb = payload_size / 1e6
    print(f"payload {payload_size} B ({args.tokens} tokens), {args.messages} msgs x {args.rounds} rounds")
    for k in ("raw", "ours"):
        v = res[k]
        print(f"  {k:4s}: {v['msgs_per_s']:8.0f} msg/s ({v['msgs_per_s'] * mb:6.1f} MB/s) publish+consume; "
              f"publish {v['publish_msgs_per_s']:.0f}/s, consume {v['consume_msgs_per_s']:.0f}/s")
    print(f"  ratio ours/raw = {res['ratio']:.3f} (target >= 0.8: {'PASS' if res['pass'] else 'FAIL'}) -> {out}")


if __name__ == "__main__":
    asyncio.run(main())
