"""One optimizer step's record: the schema of metrics.jsonl, and what the run loggers,
Prometheus, the job state, `kuberl run`'s report and the benches read, by field.

The trainer writes one row per step (`Trainer.train`); the loop adds what its round
measured (waiting, generating, the weight sync, evaluation). On disk a row is one flat JSON
object, as it always was: the backend's update statistics and the evaluation scores are
keys of their own there (``loss``, ``kl``, ``eval/<set>/<metric>``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

EVAL_PREFIX = "eval/"


@dataclass
class StepRow:
    step: int
    policy_version: int
    reward_mean: float
    reward_std: float = 0.0
    pass_rate: float = 0.0
    samples: int = 0  # trained at this step
    samples_trained: int = 0  # since the job began
    infra_failed: int = 0  # masked at this step: their reward could not be computed
    infra_failed_total: int = 0
    samples_per_s: float = 0.0
    elapsed_s: float = 0.0  # RL wall time since the job began, across restarts
    train_s: float = 0.0
    stage: int = 0  # curriculum stage
    stage_name: str = ""
    tokens: int = 0
    tokens_per_s: float = 0.0
    response_length_mean: float = 0.0
    response_length_max: int = 0
    staleness_mean: float = 0.0
    staleness_max: int = 0
    staleness_counts: dict[str, int] = field(default_factory=dict)  # policy-version lag -> samples
    epoch: int = 0
    mini_batch: int = 0
    mode: str = ""
    resumed_from: int | None = None
    time: float = 0.0  # Unix time the row was made
    # The backend's update statistics (loss, kl, entropy, clip_frac, grad_norm, ...).
    policy: dict[str, float] = field(default_factory=dict)
    # What the round measured, shared by the steps trained from it (None: not measured).
    rollout_reward_mean: float | None = None  # colocated: over every generated sample
    stale_dropped: int | None = None  # decoupled: samples dropped as too stale, since the job began
    in_flight: int | None = None  # decoupled: prompts issued and not yet trained
    trainer_idle_percent: float | None = None  # decoupled: share of the round spent waiting for trajectories
    time_generate_s: float | None = None
    time_wait_s: float | None = None
    time_weight_sync_s: float | None = None
    weight_sync_bytes: int | None = None  # on the round's last step, when it published
    # An evaluation on this step (eval/<set>/<metric> -> score), and its step and duration.
    evaluation: dict[str, float] = field(default_factory=dict)
    eval_step: int | None = None
    time_eval_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The flat metrics.jsonl object (fields measured as None are left out)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("policy", "evaluation"):
                out.update(value)
            elif value is not None or f.name == "resumed_from":
                out[f.name] = value
        return out

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> StepRow:
        """A metrics.jsonl object; keys that are not fields are the policy statistics or, under
        ``eval/``, the evaluation's."""
        names = {f.name for f in fields(cls)} - {"policy", "evaluation"}
        known = {k: v for k, v in row.items() if k in names}
        rest = {k: v for k, v in row.items() if k not in names}
        return cls(**known, policy={k: v for k, v in rest.items() if not k.startswith(EVAL_PREFIX)},
                   evaluation={k: v for k, v in rest.items() if k.startswith(EVAL_PREFIX)})

    def add_evaluation(self, result: dict[str, float]) -> None:
        """What `Trainer.evaluate` returned: scores, and the step and seconds it took."""
        self.evaluation.update({k: v for k, v in result.items() if k.startswith(EVAL_PREFIX)})
        self.eval_step = int(result["eval_step"]) if "eval_step" in result else self.eval_step
        self.time_eval_s = result.get("time_eval_s", self.time_eval_s)


def share_round(rows: list[StepRow], **seconds: float) -> None:
    """A round's durations (``time_*_s`` fields), shared by the steps trained from it."""
    for row in rows:
        for name, value in seconds.items():
            setattr(row, name, round(value / len(rows), 4))
