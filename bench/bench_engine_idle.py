"""What an idle SGLang server costs the machine, with and without `--sleep-on-idle`.

An RL engine spends much of a run idle: beside the trainer while it steps (colocated),
while a weight version loads, between rounds. SGLang's scheduler polls its request
sockets without blocking unless told to park (`flags.IDLE_FLAGS`, which every server
kuberl starts gets). Per mode ("spin": the flag left out, "park": kuberl's default), one
server of the tiny model on the CPU, measured while idle:

* the CPU it uses (cores, from its process group's user + system time);
* a fixed torch workload's time beside it, against the same workload with no server (the
  trainer on a 2-core machine, or any neighbour on a node);
* how fast it answers a short request after idling (parking must not cost latency).

    .venv/bin/python bench/bench_engine_idle.py [--idle-s 10] [--requests 5] [--work 500]

Needs the SGLang venv (e2e/sglang/setup.sh). Writes bench/results/bench_engine_idle.json.
"""

from __future__ import annotations

import argparse
import os
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

from _common import median, write_result

PROMPT = [5, 6, 7, 8]


def neighbour_work(iterations: int) -> float:
    """Seconds for a fixed amount of matmul on every core this process may use."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    a = torch.randn(384, 384)
    t0 = time.perf_counter()
    for _ in range(iterations):
        a = torch.tanh(a @ a)
    return time.perf_counter() - t0


def measure_mode(model_dir: Path, work: Path, sleep_on_idle: bool, args) -> dict:
    mode = "park" if sleep_on_idle else "spin"
    server = SGLangServer(ServerConfig(model_path=str(model_dir), dtype="float32", random_seed=0,
                                       sleep_on_idle=sleep_on_idle), log_path=work / f"server-{mode}.log")
    with server:
        engine = SGLangEngine(SGLangClient(server.url, liveness=server.check_alive), scratch_dir=work / f"s-{mode}")
        request = GenerationRequest(PROMPT, max_new_tokens=8, temperature=0.0, stop_ids=())
        engine.generate([request])  # warm
        before = server.cpu_seconds()
        time.sleep(args.idle_s)
        idle_cores = (server.cpu_seconds() - before) / args.idle_s
        latencies = []
        for _ in range(args.requests):
            time.sleep(args.gap_s)
            t0 = time.perf_counter()
            engine.generate([request])
            latencies.append(time.perf_counter() - t0)
        work_s = median([neighbour_work(args.work) for _ in range(args.rounds)])
        engine.close()
    print(f"{mode}: idle {idle_cores:.2f} cores, answer after idle {median(latencies) * 1e3:.0f} ms, "
          f"neighbour work {work_s:.2f} s", flush=True)
    return {"flags": ["--sleep-on-idle"] if sleep_on_idle else [], "idle_cores": round(idle_cores, 3),
            "answer_after_idle_ms": round(median(latencies) * 1e3, 1), "neighbour_work_s": round(work_s, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--idle-s", type=float, default=10.0, help="idle window the server's CPU is measured over")
    p.add_argument("--requests", type=int, default=5, help="short requests, each after --gap-s of idling")
    p.add_argument("--gap-s", type=float, default=2.0)
    p.add_argument("--work", type=int, default=500, help="matmul iterations of the neighbour workload")
    p.add_argument("--rounds", type=int, default=3, help="neighbour-workload repeats per mode (median)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="kuberl-engine-idle-") as tmp:
        work = Path(tmp)
        model_dir = write_builtin_tiny(work / "model", seed=11)
        # The no-server baseline before and after the two servers: background drift shows as their spread.
        alone = [neighbour_work(args.work) for _ in range(args.rounds)]
        modes = {"spin": measure_mode(model_dir, work, False, args), "park": measure_mode(model_dir, work, True, args)}
        alone += [neighbour_work(args.work) for _ in range(args.rounds)]
    alone_s = median(alone)
    spin, park = modes["spin"], modes["park"]
    out = write_result("bench_engine_idle", {
        "settings": vars(args),
        "cpus": len(os.sched_getaffinity(0)),
        "neighbour_work_alone_s": round(alone_s, 3),
        "modes": modes,
        "idle_cores_saved": round(spin["idle_cores"] - park["idle_cores"], 3),
        # >1: how much longer the same work takes beside an idle server than with none.
        "neighbour_slowdown": {m: round(r["neighbour_work_s"] / alone_s, 3) for m, r in modes.items()},
        "answer_after_idle_ratio_park_to_spin": round(park["answer_after_idle_ms"] / spin["answer_after_idle_ms"], 3),
    })
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
