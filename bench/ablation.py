"""Ablation on the tiny job: token vs sequence loss aggregation, with and without a two-stage curriculum.

A 2x2 grid: loss aggregation (token | sequence) x curriculum (one stage | two stages).
Each variant is the colocated tiny job (examples/tiny-cpu-colocated.yaml) with only those
switches changed in the manifest, run by `kuberl run` on this machine, one after another;
the reward curves go to bench/results/ablation.png and the summaries (reward at the start,
the end, and per stage; wall time) to bench/results/ablation.json. The default 300 steps
keep the whole grid under 15 minutes on 2 busy CPU cores.

The curriculum variants train first on the problems whose sum is a single digit (medium,
8 samples per prompt) and switches to all problems with 16 samples per prompt (hard) once
the moving pass rate reaches 0.6. After the switch they are scored on the same problems as
the single-stage variants (all sums), so the curves are comparable from there on.

    .venv/bin/python bench/ablation.py [--steps 300]
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

from kuberl.operator.local.report import moving_average, reward_window

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

CURRICULUM = {
    "stages": [
        {"name": "medium", "difficulty": {"max": 1}, "samplesPerPrompt": 8, "until": {"passRate": 0.6, "window": 8}},
        {"name": "hard", "samplesPerPrompt": 16},
    ]
}


NOTE = ("colocated tiny job, one run per variant; reward_start/reward_end: mean reward of the first/last "
        "max(5, steps/20) steps; "
        "curriculum variants train on single-digit sums (medium, 8 samples/prompt) until the 8-step pass rate "
        "reaches 0.6, then on all sums (hard, 16 samples/prompt) like the single-stage variants")


def variants(base: dict) -> dict[str, dict]:
    out = {}
    for name, aggregation, curriculum in (("token", "token", False), ("sequence", "sequence", False),
                                           ("token+curriculum", "token", True), ("sequence+curriculum", "sequence", True)):
        doc = copy.deepcopy(base)
        doc["metadata"]["name"] = f"ablation-{name.replace('+', '-')}"
        doc["spec"]["algorithm"]["lossAggregation"] = aggregation
        if curriculum:
            doc["spec"]["curriculum"] = CURRICULUM
        out[name] = doc
    return out


def run_variant(name: str, doc: dict, steps: int, work: Path) -> dict:
    doc["spec"]["runPolicy"]["maxSteps"] = steps
    manifest = work / f"{doc['metadata']['name']}.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    out = work / doc["metadata"]["name"]
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "kuberl.operator.cli", "run", str(manifest), "-o", str(out), "-q"], cwd=ROOT, check=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((out / "summary.json").read_text())
    return {"name": name, "wall_s": round(time.monotonic() - t0, 1), "summary": summary,
            "curve": [(r["step"], r["reward_mean"], r.get("stage_name")) for r in rows]}


def row(r: dict, steps: int) -> dict:
    """One variant's line of the table; start/end rewards from its own curve, one window for all."""
    k = reward_window(steps)
    rewards = [c[1] for c in r["curve"]]
    return {"variant": r["name"], "wall_s": r["wall_s"], "reward_start": round(sum(rewards[:k]) / k, 4),
            "reward_end": round(sum(rewards[-k:]) / k, 4), "reward_max": max(rewards),
            "samples_per_s": r["summary"]["samples_per_s"],
            "stage_switch_step": next((c[0] for c in r["curve"] if c[2] == "hard"), None)}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in results:
        steps = [c[0] for c in r["curve"]]
        ax.plot(steps, moving_average([c[1] for c in r["curve"]], 10), label=r["name"])
        switch = next((c[0] for c in r["curve"] if c[2] == "hard"), None)
        if switch:
            ax.axvline(switch, ls=":", color=ax.lines[-1].get_color(), alpha=0.7)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward (10-step moving mean)")
    ax.set_title("tiny job ablation: loss aggregation and curriculum (dotted: stage switch)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--work", default=str(ROOT / "runs" / "ablation"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((ROOT / "examples" / "tiny-cpu-colocated.yaml").read_text())
    t0 = time.monotonic()
    results = [run_variant(name, doc, args.steps, work) for name, doc in variants(base).items()]
    total_s = round(time.monotonic() - t0, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(results, RESULTS / "ablation.png")
    table = [row(r, args.steps) for r in results]
    (RESULTS / "ablation.json").write_text(json.dumps({"steps": args.steps, "total_wall_s": total_s, "note": NOTE, "results": table,
                                                        "curves": {r["name"]: r["curve"] for r in results}}, indent=1))
    for row in table:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
