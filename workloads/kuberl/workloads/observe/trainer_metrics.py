"""Prometheus series of the trainer process, updated from its metrics.jsonl rows."""

from __future__ import annotations


from prometheus_client import Counter, Gauge, Histogram

from kuberl.workloads.observe.step_row import StepRow
from kuberl.workloads.weights.stages import PUBLISH_STAGES

STEP = Gauge("kuberl_trainer_step", "Optimizer steps completed.")
POLICY_VERSION = Gauge("kuberl_trainer_policy_version", "Policy version of the trainer's weights.")
SAMPLES = Counter("kuberl_trainer_samples", "Samples trained on.")
TOKENS = Counter("kuberl_trainer_tokens", "Response tokens trained on.")
PHASE_SECONDS = Counter("kuberl_trainer_phase_seconds", "Wall time of the training loop, by part: generation "
                        "(colocated), training, weight_sync, waiting (for trajectories, decoupled), evaluation.",
                        ["part"])
STEP_SECONDS = Histogram("kuberl_trainer_step_seconds", "Wall time per optimizer step, all parts.",
                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
REWARD = Gauge("kuberl_trainer_reward", "Reward of the latest step's samples, by statistic (mean, std, pass_rate).",
               ["stat"])
LOSS = Gauge("kuberl_trainer_loss", "Policy loss of the latest optimizer step.")
POLICY_STATS = Gauge("kuberl_trainer_policy_stat",
                     "Update statistics of the latest step (kl, entropy, clip_frac, grad_norm, "
                     "ratio_mean, is_weight_mean, is_masked_frac).", ["stat"])
STALENESS = Gauge("kuberl_trainer_staleness",
                  "Policy versions between the trained samples and the trainer, latest step (mean, max).", ["stat"])
STALE_DROPPED = Counter("kuberl_trainer_stale_dropped", "Samples dropped as more than maxOffPolicySteps versions old.")
IDLE = Gauge("kuberl_trainer_idle_percent", "Share of the last round the trainer waited for trajectories (decoupled).")
RESPONSE_LENGTH = Gauge("kuberl_trainer_response_length_mean", "Mean response length (tokens) of the latest step.")
STAGE = Gauge("kuberl_trainer_curriculum_stage", "Index of the current curriculum stage.")
WEIGHT_SYNC_SECONDS = Histogram("kuberl_trainer_weight_sync_seconds",
                                "Time to publish one policy version to the weight store.",
                                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
WEIGHT_SYNC_BYTES = Counter("kuberl_trainer_weight_sync_bytes", "Bytes of policy versions published.")
WEIGHT_SYNC_STORED_BYTES = Counter("kuberl_trainer_weight_sync_stored_bytes",
                                   "Bytes uploaded for policy versions (below the "
                                   "version's bytes when stored as deltas).")
WEIGHT_SYNC_STAGE_SECONDS = Histogram("kuberl_trainer_weight_sync_stage_seconds",
                                      f"Seconds one policy version spent in each publish stage (weights.stages: "
                                      f"{', '.join(PUBLISH_STAGES)}; "
                                      "per-file stages summed over file threads).", ["stage"],
                                      buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
for _stage in PUBLISH_STAGES:  # every stage's series from the start: a stage that never ran shows 0, not "no data"
    WEIGHT_SYNC_STAGE_SECONDS.labels(_stage)
EVAL = Gauge("kuberl_trainer_eval_score", "Latest held-out evaluation, by dataset and score (greedy, pass@1, pass@k).",
             ["dataset", "score"])

POLICY_KEYS = ("kl", "entropy", "clip_frac", "grad_norm", "ratio_mean", "is_weight_mean", "is_masked_frac")


def phase_seconds(row: StepRow) -> dict[str, float]:
    """The step's wall time by phase (a round's phases are shared by the steps trained from it)."""
    return {"generation": row.time_generate_s or 0.0, "training": row.train_s,
            "weight_sync": row.time_weight_sync_s or 0.0,
            "waiting": row.time_wait_s or 0.0, "evaluation": row.time_eval_s or 0.0}


class TrainerMetrics:
    """Feeds the series from rows; counters from per-step values, cumulative ones by difference."""

    def __init__(self) -> None:
        self._stale_dropped = 0
        for part in phase_seconds(StepRow(step=0, policy_version=0, reward_mean=0.0)):
            PHASE_SECONDS.labels(part)

    def observe_row(self, row: StepRow) -> None:
        STEP.set(row.step)
        POLICY_VERSION.set(row.policy_version)
        SAMPLES.inc(row.samples)
        TOKENS.inc(row.tokens)
        phases = phase_seconds(row)
        for part, seconds in phases.items():
            PHASE_SECONDS.labels(part).inc(seconds)
        STEP_SECONDS.observe(sum(phases.values()))
        for stat, value in (("mean", row.reward_mean), ("std", row.reward_std), ("pass_rate", row.pass_rate)):
            REWARD.labels(stat).set(value)
        if "loss" in row.policy:
            LOSS.set(row.policy["loss"])
        for key in POLICY_KEYS:
            if key in row.policy:
                POLICY_STATS.labels(key).set(row.policy[key])
        STALENESS.labels("mean").set(row.staleness_mean)
        STALENESS.labels("max").set(row.staleness_max)
        dropped = row.stale_dropped if row.stale_dropped is not None else self._stale_dropped
        if dropped > self._stale_dropped:
            STALE_DROPPED.inc(dropped - self._stale_dropped)
        self._stale_dropped = max(dropped, self._stale_dropped)
        if row.trainer_idle_percent is not None:
            IDLE.set(row.trainer_idle_percent)
        RESPONSE_LENGTH.set(row.response_length_mean)
        STAGE.set(row.stage)
        for key, value in row.evaluation.items():
            parts = key.split("/")
            if len(parts) == 3:
                EVAL.labels(parts[1], parts[2]).set(value)

    @staticmethod
    def weight_sync(seconds: float, nbytes: int, stored_bytes: int, stages: dict[str, float] | None = None) -> None:
        WEIGHT_SYNC_SECONDS.observe(seconds)
        for stage, stage_seconds in (stages or {}).items():
            WEIGHT_SYNC_STAGE_SECONDS.labels(stage).observe(stage_seconds)
        WEIGHT_SYNC_BYTES.inc(nbytes)
        WEIGHT_SYNC_STORED_BYTES.inc(stored_bytes)
