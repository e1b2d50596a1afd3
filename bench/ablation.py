"""Ablation on the tiny job, over seeds: token vs sequence loss aggregation, one- vs two-stage curriculum.

A 2x2 grid — loss aggregation (token | sequence) x curriculum (one stage | two stages) —
each variant run with ``--seeds`` seeds (runPolicy.seed: initial weights, warm start,
prompt order, sampling). Each run is the colocated tiny job (examples/tiny-cpu-colocated.yaml)
with only those switches changed, run by `kuberl run` on this machine, one after another.

Hard prompts are the sums with two-digit answers (10..18): a longer answer to get exactly
right, so they start as the rarer successes. The curriculum variants train first on the
sums with one-digit answers (medium, 8 samples per prompt) and switch to all sums with 16
samples per prompt (hard) once the 8-step pass rate reaches 0.6. Every variant is scored
on the same held-out sums (the builtin test split: 20 of the 100, never trained on) by the
job's own evaluation, greedy and sampled, on all of them and on the hard ones.

Results: bench/results/ablation.json (per run and mean ± std per variant: final training
reward, held-out greedy and pass@1 on all and on hard prompts) and bench/results/ablation.png.

    .venv/bin/python bench/ablation.py [--steps 300] [--seeds 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import yaml

from _common import write_result
from kuberl.operator.local.report import moving_average, read_metrics, reward_window
from kuberl.workloads.spec import Dataset
from kuberl.workloads.tasks.datasets import load_dataset

ROOT = Path(__file__).resolve().parent.parent

CURRICULUM = {
    "stages": [
        {"name": "medium", "difficulty": {"max": 1}, "samplesPerPrompt": 8, "until": {"passRate": 0.6, "window": 8}},
        {"name": "hard", "samplesPerPrompt": 16},
    ]
}
VARIANTS = (("token", "token", False), ("sequence", "sequence", False),
            ("token+curriculum", "token", True), ("sequence+curriculum", "sequence", True))


def held_out_hard(work: Path) -> Path:
    """The held-out sums with two-digit answers, as a JSONL dataset the evaluation reads."""
    path = work / "held-out-hard.jsonl"
    test = load_dataset(Dataset(name="t", source="builtin://arithmetic?split=test"))
    path.write_text("".join(json.dumps({"prompt": p.prompt,
                                        "answer": p.answer}) + "\n" for p in test if int(p.answer) >= 10))
    return path


def variants(base: dict, seed: int, hard: Path) -> dict[str, dict]:
    out = {}
    for name, aggregation, curriculum in VARIANTS:
        doc = copy.deepcopy(base)
        doc["metadata"]["name"] = f"ablation-{name.replace('+', '-')}-s{seed}"
        doc["spec"]["algorithm"]["lossAggregation"] = aggregation
        doc["spec"]["runPolicy"]["seed"] = seed
        doc["spec"]["evaluation"] = {"datasets": [{"name": "held-out", "source": "builtin://arithmetic?split=test"},
                                                  {"name": "held-out-hard", "source": f"file://{hard}"}],
                                     "intervalSteps": 50, "samplesPerPrompt": 4}
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
    subprocess.run([sys.executable, "-m", "kuberl.operator.cli", "run", str(manifest), "-o", str(out), "-q"], cwd=ROOT,
                   check=True)
    rows = read_metrics(out / "metrics.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    return {"name": name, "wall_s": round(time.monotonic() - t0, 1), "summary": summary,
            "curve": [(r.step, r.reward_mean, r.stage_name or None) for r in rows],
            "evals": [{**r.evaluation, "eval_step": r.eval_step} for r in rows if r.eval_step is not None]}


def run_row(r: dict, steps: int) -> dict:
    """One run's numbers: training reward at the start and end (one window for all), the
    final held-out scores, and where the curriculum switched."""
    k = reward_window(steps)
    rewards = [c[1] for c in r["curve"]]
    last = r["evals"][-1]
    return {"variant": r["name"], "seed": r["seed"], "wall_s": r["wall_s"],
            "reward_start": round(sum(rewards[:k]) / k, 4), "reward_end": round(sum(rewards[-k:]) / k, 4),
            "heldout_greedy": last["eval/held-out/greedy"], "heldout_pass1": last["eval/held-out/pass@1"],
            "hard_greedy": last["eval/held-out-hard/greedy"], "hard_pass1": last["eval/held-out-hard/pass@1"],
            "hard_pass1_start": r["evals"][0]["eval/held-out-hard/pass@1"],
            "stage_switch_step": next((c[0] for c in r["curve"] if c[2] == "hard"), None)}


def mean_std(values: list[float]) -> list[float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return [round(m, 4), round(sd, 4)]


def per_variant(rows: list[dict]) -> list[dict]:
    """Mean ± std (unbiased, over seeds) of every score, per variant."""
    out = []
    for name, _, _ in VARIANTS:
        mine = [r for r in rows if r["variant"] == name]
        out.append({"variant": name, "seeds": len(mine), **{key: mean_std([r[key] for r in mine]) for key in (
            "reward_start", "reward_end", "heldout_greedy", "heldout_pass1", "hard_greedy", "hard_pass1",
            "hard_pass1_start")}})
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {name: f"C{i}" for i, (name, _, _) in enumerate(VARIANTS)}
    for r in results:
        steps = [c[0] for c in r["curve"]]
        label = r["name"] if r["seed"] == 0 else None
        ax.plot(steps, moving_average([c[1] for c in r["curve"]], 10), color=colours[r["name"]], alpha=0.7, label=label)
        bx.plot([e["eval_step"] for e in r["evals"]], [e["eval/held-out-hard/pass@1"] for e in r["evals"]],
                color=colours[r["name"]], marker="o", alpha=0.7, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training reward (10-step moving mean)")
    ax.set_title("training reward, every seed")
    bx.set_xlabel("optimizer step")
    bx.set_ylabel("held-out hard pass@1")
    bx.set_title("held-out sums with two-digit answers")
    for a in (ax, bx):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--work", default=str(ROOT / "runs" / "ablation"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((ROOT / "examples" / "tiny-cpu-colocated.yaml").read_text())
    hard = held_out_hard(work)
    t0 = time.monotonic()
    results = []
    for seed in range(args.seeds):
        for name, doc in variants(base, seed, hard).items():
            results.append({**run_variant(name, doc, args.steps, work), "seed": seed})
            print(json.dumps(run_row(results[-1], args.steps)), flush=True)
    total_s = round(time.monotonic() - t0, 1)
    runs = [run_row(r, args.steps) for r in results]
    summary = per_variant(runs)
    written = write_result("ablation", {
        "steps": args.steps, "seeds": args.seeds, "total_wall_s": total_s,
        "note": __doc__.split("\n\n")[1].replace("\n", " "),
        "summary_mean_std": summary, "runs": runs,
        "curves": {f"{r['name']}/s{r['seed']}": r["curve"] for r in results}})
    plot(results, written.with_suffix(".png"))
    for line in summary:
        print(json.dumps(line))


if __name__ == "__main__":
    main()
