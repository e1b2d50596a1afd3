"""Decoupled vs colocated under heavy-tailed episode latency: trained samples/s and final reward.

Both runs are the tiny job scored by the reference AgentEnv (arithmetic task) with an
injected lognormal per-step delay (median --median s, sigma --tail). Colocated mode must
wait for the slowest episode of every batch before it trains; decoupled mode keeps many
episodes in flight on the rollout agent and trains on whatever groups are complete, with
staleness bounded by maxOffPolicySteps and corrected by truncated importance sampling.
The baseline (colocated) is measured in the same invocation, same steps, same machine.

    .venv/bin/python bench/bench_decoupled.py [--steps 150]

Writes bench/results/bench_decoupled.json (and the two reward curves as a PNG).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET_RATIO = 2.5


def manifests(steps: int, median: float, tail: float) -> dict[str, dict]:
    base = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    base["spec"]["runPolicy"]["maxSteps"] = steps
    base["spec"]["reward"] = {"type": "agentEnv", "agentEnv": "arith"}
    base["spec"]["agentEnvs"] = [{"name": "arith", "spec": {
        "task": "arithmetic", "concurrencyPerReplica": 1024, "episodeTimeoutSeconds": 30,
        "latency": {"distribution": "lognormal", "medianSeconds": median, "tail": tail}}}]
    decoupled = copy.deepcopy(base)
    decoupled["metadata"]["name"] = "bench-decoupled"
    decoupled["spec"]["maxOffPolicySteps"] = 4  # slow episodes may finish a few versions later
    decoupled["spec"]["rollout"]["template"]["agent"] = {"concurrency": 64}
    colocated = copy.deepcopy(base)
    colocated["metadata"]["name"] = "bench-colocated"
    colocated["spec"]["mode"] = "colocated"
    colocated["spec"]["maxOffPolicySteps"] = 0
    del colocated["spec"]["rollout"]
    return {"colocated": colocated, "decoupled": decoupled}


def run(doc: dict, work: Path) -> dict:
    manifest = work / f"{doc['metadata']['name']}.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    out = work / doc["metadata"]["name"]
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "kuberl.operator.cli", "run", str(manifest), "-o", str(out), "-q"], cwd=ROOT, check=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"wall_s": round(time.monotonic() - t0, 1), "summary": json.loads((out / "summary.json").read_text()),
            "curve": [(r["step"], r["reward_mean"]) for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--median", type=float, default=0.05, help="median injected env delay (s)")
    ap.add_argument("--tail", type=float, default=1.5, help="lognormal sigma of the delay")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-decoupled"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {mode: run(doc, work) for mode, doc in manifests(args.steps, args.median, args.tail).items()}
    col, dec = results["colocated"]["summary"], results["decoupled"]["summary"]
    ratio = dec["samples_per_s"] / col["samples_per_s"]
    report = {
        "steps": args.steps, "latency": {"distribution": "lognormal", "median_s": args.median, "sigma": args.tail},
        "colocated": {k: col[k] for k in ("samples_per_s", "reward_start", "reward_end", "rl_seconds")},
        "decoupled": {k: dec[k] for k in ("samples_per_s", "reward_start", "reward_end", "rl_seconds")},
        "samples_per_s_ratio": round(ratio, 2), "target_ratio": TARGET_RATIO, "ratio_met": ratio >= TARGET_RATIO,
        "final_reward_not_worse": dec["reward_end"] >= col["reward_end"] - 0.05,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_decoupled.json").write_text(json.dumps({**report, "curves": {m: r["curve"] for m, r in results.items()}}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, r in results.items():
        ax.plot([c[0] for c in r["curve"]], [c[1] for c in r["curve"]], label=f"{mode} ({r['summary']['samples_per_s']:.0f} samples/s)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward")
    ax.set_title(f"heavy-tailed env latency (lognormal median {args.median}s, sigma {args.tail})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "bench_decoupled.png", dpi=120)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
