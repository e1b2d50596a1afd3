"""metrics.jsonl rows as the scalars and histograms every run logger writes. Pure.

One row per optimizer step is the record; TensorBoard and W&B get the same numbers under
grouped tags (``reward/reward_mean``), so their dashboards sort by topic while the names
stay the ones `metrics.jsonl` and the README use.
"""

from __future__ import annotations

from typing import Any

GROUPS: dict[str, tuple[str, ...]] = {
    "reward": ("reward_mean", "reward_std", "pass_rate", "rollout_reward_mean", "infra_failed", "infra_failed_total"),
    "loss": ("loss", "kl", "entropy", "grad_norm"),
    "ppo": ("clip_frac", "ratio_mean", "ratio_dev_mean", "ratio_min", "ratio_max", "behaviour_gap"),
    "off_policy": ("weight_mean", "is_weight_mean", "is_masked_frac", "staleness_mean", "staleness_max",
                   "stale_dropped"),
    "throughput": ("samples_per_s", "tokens_per_s", "samples", "samples_trained", "tokens", "in_flight",
                   "trainer_idle_percent"),
    "length": ("response_length_mean", "response_length_max"),
    "time": ("train_s", "time_generate_s", "time_weight_sync_s", "time_wait_s", "time_eval_s", "elapsed_s"),
    "weights": ("weight_sync_bytes",),
    "progress": ("policy_version", "stage", "epoch", "mini_batch"),
}
TAG = {key: f"{group}/{key}" for group, keys in GROUPS.items() for key in keys}
# Identify the row rather than measure anything (the step is the x axis).
NOT_SCALARS = frozenset({"step", "time", "eval_step", "resumed_from"})
HISTOGRAMS = {"staleness_counts": "off_policy/staleness"}


def tag(key: str) -> str:
    """The logger tag of a metrics.jsonl key; evaluation keys (eval/<dataset>/<score>) keep theirs."""
    if key.startswith("eval/"):
        return key
    return TAG.get(key, f"other/{key}")


def is_scalar(key: str, value: Any) -> bool:
    return key not in NOT_SCALARS and isinstance(value, int | float) and not isinstance(value, bool)


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """Every numeric field of the row, by tag."""
    return {tag(k): float(v) for k, v in row.items() if is_scalar(k, v)}


def histograms(row: dict[str, Any]) -> dict[str, list[float]]:
    """Count maps of the row ({value: count}) expanded to samples, by tag."""
    out = {}
    for key, name in HISTOGRAMS.items():
        counts = row.get(key)
        if counts:
            out[name] = [float(v) for v,
                         n in sorted(counts.items(), key=lambda kv: float(kv[0])) for _ in range(int(n))]
    return out
