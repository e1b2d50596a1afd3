"""Decoupled vs colocated under heavy-tailed episode latency: trained samples/s and final reward.

Both runs are the tiny job scored by the reference AgentEnv (arithmetic task) with an
injected lognormal per-step delay (median --median s, sigma --tail). Colocated mode must
wait for the slowest episode of every batch before it trains; decoupled mode keeps
episodes in flight on the rollout agent and trains on whatever groups are complete.

What is compared (the baseline, colocated, is measured in the same invocation, same
machine, first; then decoupled):

* **throughput**: trained samples per second of RL wall time (warm start and process
  start excluded). Target: decoupled >= 2.5x colocated.
* **reward at an equal wall-clock budget** (the headline "final reward not worse"):
  colocated runs ``--steps`` optimizer steps in T seconds; decoupled gets the same T
  seconds (it runs up to ``--decoupled-steps`` and its curve is cut at T). Each side's
  reward is the mean of its last ``max(5, steps/20)`` steps within the budget. Decoupled
  may not be more than 0.05 below colocated (one 128-sample batch is noisy by ~±0.1). This
  is what a user with a fixed amount of time (or GPU-hours) gets from each mode.
* **reward at equal steps**, reported too (not a pass/fail criterion): after the same
  number of samples, decoupled learns somewhat less per step — its samples are up to one
  policy version old (``maxOffPolicySteps: 1``, as the example job; older ones are dropped
  and their prompts replaced) and corrected by truncated importance sampling (cap 2)
  against the behaviour logprobs.

* **abandoning stale groups** (A/B, a third run): the same decoupled job with
  ``agent.abandonStaleGroups: false``, so agents finish groups the trainer will drop;
  reported as trained samples/s and stale drops of one over the other.

    .venv/bin/python bench/bench_decoupled.py [--steps 60] [--decoupled-steps 240] [--no-abandon-ab]

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

from _common import write_result
from kuberl.operator.local.report import read_metrics, reward_window

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 2.5


def manifests(steps: int, decoupled_steps: int, median: float, tail: float) -> dict[str, dict]:
    base = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    base["spec"]["runPolicy"]["maxSteps"] = steps
    base["spec"]["reward"] = {"type": "agentEnv", "agentEnv": "arith"}
    base["spec"]["agentEnvs"] = [{"name": "arith", "spec": {
        "task": "arithmetic", "concurrencyPerReplica": 1024, "episodeTimeoutSeconds": 30,
        "latency": {"distribution": "lognormal", "medianSeconds": median, "tail": tail}}}]
    decoupled = copy.deepcopy(base)
    decoupled["metadata"]["name"] = "bench-decoupled"
    decoupled["spec"]["runPolicy"]["maxSteps"] = decoupled_steps
    decoupled["spec"]["maxOffPolicySteps"] = 1  # as the example job: off-policy by one version at most
    decoupled["spec"]["algorithm"]["offPolicyCorrection"] = {"method": "truncate",
                                                             "high": 2.0}  # truncated IS, as measured
    decoupled["spec"]["rollout"]["template"]["agent"] = {"concurrency": 64}  # the in-flight budget bounds it
    keep_stale = copy.deepcopy(decoupled)  # the A/B: agents finish groups the trainer will drop
    keep_stale["metadata"]["name"] = "bench-decoupled-keep-stale"
    keep_stale["spec"]["rollout"]["template"]["agent"]["abandonStaleGroups"] = False
    colocated = copy.deepcopy(base)
    colocated["metadata"]["name"] = "bench-colocated"
    colocated["spec"]["mode"] = "colocated"
    colocated["spec"]["maxOffPolicySteps"] = 0
    del colocated["spec"]["rollout"]
    return {"colocated": colocated, "decoupled": decoupled, "decoupled_keep_stale": keep_stale}


def run(doc: dict, work: Path) -> dict:
    manifest = work / f"{doc['metadata']['name']}.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    out = work / doc["metadata"]["name"]
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "kuberl.operator.cli", "run", str(manifest), "-o", str(out), "-q"], cwd=ROOT,
                   check=True)
    rows = read_metrics(out / "metrics.jsonl")
    return {"wall_s": round(time.monotonic() - t0, 1), "summary": json.loads((out / "summary.json").read_text()),
            "curve": [(r.step, r.reward_mean, r.elapsed_s) for r in rows],
            "stale_dropped": rows[-1].stale_dropped or 0, "samples_trained": rows[-1].samples_trained,
            "groups_abandoned": abandoned_groups(out / "logs")}


def abandoned_groups(logs: Path) -> int:
    """Groups the rollout agents gave up on once they were too stale to train (from their JSON logs)."""
    count = 0
    for path in logs.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"group abandoned' in line:
                count += 1
    return count


def mean_reward(curve: list, end: int, k: int) -> float:
    """Mean reward of the ``k`` steps up to index ``end`` (exclusive) of a curve."""
    xs = [c[1] for c in curve[max(0, end - k):end]]
    return round(sum(xs) / len(xs), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="colocated optimizer steps (sets the wall-clock budget)")
    ap.add_argument("--decoupled-steps", type=int, default=240, help="decoupled's step cap (it is cut at the budget)")
    ap.add_argument("--median", type=float, default=0.05, help="median injected env delay (s)")
    ap.add_argument("--tail", type=float, default=1.5, help="lognormal sigma of the delay")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-decoupled"))
    ap.add_argument("--no-abandon-ab", dest="abandon_ab", action="store_false",
                    help="skip the third run (decoupled with agent.abandonStaleGroups: false)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    docs = manifests(args.steps, args.decoupled_steps, args.median, args.tail)
    modes = ("colocated", "decoupled") + (("decoupled_keep_stale",) if args.abandon_ab else ())
    results = {mode: run(docs[mode], work) for mode in modes}  # colocated sets the budget
    col, dec = results["colocated"]["summary"], results["decoupled"]["summary"]
    ratio = dec["samples_per_s"] / col["samples_per_s"]
    k = reward_window(args.steps)
    ccurve, dcurve = results["colocated"]["curve"], results["decoupled"]["curve"]
    budget = ccurve[-1][2]  # colocated's RL seconds at its last step
    dec_in_budget = sum(1 for c in dcurve if c[2] <= budget)
    col_end, dec_end = mean_reward(ccurve, len(ccurve), k), mean_reward(dcurve, dec_in_budget, k)
    dec_at_steps = mean_reward(dcurve, min(args.steps, len(dcurve)), k)
    report = {
        "compared": (f"equal RL wall-clock budget (colocated's {args.steps} steps); samples/s = trained samples / RL "
                     f"seconds; reward = mean of the last {k} steps within the budget; decoupled: maxOffPolicySteps 1 "
                     "+ truncated IS (cap 2); reward at equal steps reported alongside"),
        "latency": {"distribution": "lognormal", "median_s": args.median, "sigma": args.tail},
        "budget_rl_seconds": budget,
        "colocated": {**{key: col[key] for key in ("samples_per_s", "rl_seconds")}, "steps": len(ccurve),
                      "reward_start": mean_reward(ccurve, k, k), "reward_end": col_end},
        "decoupled": {**{key: dec[key] for key in ("samples_per_s", "rl_seconds")}, "steps": len(dcurve),
                      "steps_in_budget": dec_in_budget, "reward_start": mean_reward(dcurve, k, k),
                      "reward_end_in_budget": dec_end, "max_off_policy_steps": 1, "tis_cap": 2.0,
                      "stale_dropped": results["decoupled"]["stale_dropped"],
                      "groups_abandoned": results["decoupled"]["groups_abandoned"],
                      "samples_trained": results["decoupled"]["samples_trained"]},
        "samples_per_s_ratio": round(ratio, 2), "target_ratio": TARGET_RATIO, "ratio_met": ratio >= TARGET_RATIO,
        "reward_at_equal_wall_clock": {"colocated": col_end, "decoupled": dec_end, "tolerance": 0.05},
        "final_reward_not_worse": dec_end >= col_end - 0.05,
        "reward_at_equal_steps": {"steps": args.steps, "colocated": col_end, "decoupled": dec_at_steps},
    }
    if "decoupled_keep_stale" in results:
        keep = results["decoupled_keep_stale"]
        kept = keep["summary"]
        report["abandon_stale_groups_ab"] = {
            "compared": "decoupled as above (agents abandon groups the trainer could no longer use) vs the same job "
                        "with "
                        "agent.abandonStaleGroups: false, measured after it in the same invocation",
            "abandon": {"samples_per_s": dec["samples_per_s"], "stale_dropped": results["decoupled"]["stale_dropped"],
                        "groups_abandoned": results["decoupled"]["groups_abandoned"],
                        "samples_trained": results["decoupled"]["samples_trained"]},
            "keep_stale": {"samples_per_s": kept["samples_per_s"], "stale_dropped": keep["stale_dropped"],
                           "groups_abandoned": keep["groups_abandoned"], "samples_trained": keep["samples_trained"]},
            "samples_per_s_ratio": round(dec["samples_per_s"] / kept["samples_per_s"], 2),
            "stale_dropped_ratio": round(results["decoupled"]["stale_dropped"] / max(1, keep["stale_dropped"]), 2),
        }
    written = write_result("bench_decoupled", {**report, "curves": {m: r["curve"] for m, r in results.items()}})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for mode, r in results.items():
        ax.plot([c[0] for c in r["curve"]], [c[1] for c in r["curve"]],
                label=f"{mode} ({r['summary']['samples_per_s']:.0f} samples/s)")
        ax2.plot([c[2] for c in r["curve"]], [c[1] for c in r["curve"]], label=mode)
    ax2.set_xlabel("RL wall-clock (s)")
    ax2.set_ylabel("mean reward")
    ax2.set_title("same runs against time")
    ax2.grid(alpha=0.3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward")
    ax.set_title(f"env latency lognormal(median {args.median}s, sigma {args.tail}): equal steps")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(written.with_suffix(".png"), dpi=120)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
