"""What a local run leaves behind: metrics rows, the summary and the reward-curve plot. Pure but the plot."""

from __future__ import annotations

import json
from pathlib import Path

from kuberl.workloads.observe.step_row import StepRow


def read_metrics(path: Path) -> list[StepRow]:
    """The step rows of a run's metrics.jsonl (the trainer's schema, `StepRow`)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if "step" in row:
            rows.append(StepRow.from_json(row))
    return rows


def reward_window(n_steps: int) -> int:
    """Steps averaged for the start/end reward: 5% of the run, at least 5.

    One batch of 128 samples is noisy (±0.1 around the trend on the tiny job); a few
    percent of the run is enough to read the trend without hiding it.
    """
    return max(5, n_steps // 20)


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def summarise(steps: list[StepRow], window: int | None = None) -> dict:
    """Start/end reward (means over the first/last `window` steps) and throughput."""
    if not steps:
        return {"steps": 0}
    window = window or reward_window(len(steps))

    def mean(rs: list[StepRow]) -> float:
        return round(sum(r.reward_mean for r in rs) / len(rs), 4)

    last = steps[-1]
    evaluation = latest_evaluation(steps)
    return {
        "steps": last.step,
        "reward_start": mean(steps[:window]),
        "reward_end": mean(steps[-window:]),
        "reward_window_steps": window,
        "reward_max": max(r.reward_mean for r in steps),
        "samples_trained": last.samples_trained,
        "infra_failed_samples": last.infra_failed_total,  # masked: their reward or environment failed
        "samples_per_s": last.samples_per_s,
        "rl_seconds": last.elapsed_s,
        "mode": last.mode or None,
        "resumes": sorted({r.resumed_from for r in steps if r.resumed_from is not None}),
        **({"evaluation": evaluation} if evaluation else {}),
    }


def evaluation_curves(steps: list[StepRow]) -> dict[str, list[tuple[int, float]]]:
    """(eval step, value) per evaluation score ("eval/<dataset>/<score>") found in the rows."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for r in steps:
        if r.eval_step is None:
            continue
        for key, value in r.evaluation.items():
            curves.setdefault(key, []).append((r.eval_step, float(value)))
    return curves


def latest_evaluation(steps: list[StepRow]) -> dict[str, float]:
    """The scores of the last evaluation in the rows, and its step (empty without one)."""
    last = next((r for r in reversed(steps) if r.eval_step is not None), None)
    return {**last.evaluation, "eval_step": last.eval_step} if last else {}


def plot_rewards(steps: list[StepRow], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs, ys = [r.step for r in steps], [r.reward_mean for r in steps]
    window = reward_window(len(steps))
    ax.plot(xs, ys, alpha=0.35, linewidth=1, label="mean reward (trained batch)")
    ax.plot(xs, moving_average(ys, window), linewidth=2, label=f"moving average ({window} steps)")
    # Held-out evaluation: a second line per dataset (the greedy score and pass@1).
    for key, points in sorted(evaluation_curves(steps).items()):
        if key.endswith(("/greedy", "/pass@1")):
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", linewidth=1.5,
                    label=f"eval {key.split('/', 1)[1]}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
