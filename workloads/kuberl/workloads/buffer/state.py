"""The job-state document in the job's KV bucket: its one schema. Pure (no NATS here).

The trainer writes it (through `buffer.kv.JobStateStore`), the rollout agents follow it
for new policy versions, and the operator reads it for status and autoscaling.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class JobMetrics:
    """What the trainer measured at its latest step; the operator shows it in status and
    the autoscaler's ``trainerIdle`` signal reads ``trainer_idle_percent``."""

    reward_mean: float | None = None
    reward_std: float | None = None
    pass_rate: float | None = None
    samples_per_s: float | None = None
    # Share of the trainer's wall time since its previous step spent waiting for
    # trajectories (decoupled mode); None in colocated mode, where it generates itself.
    trainer_idle_percent: float | None = None


@dataclass
class JobState:
    """The one schema of the job's KV document: the trainer writes it, the operator and
    the rollout agents read it, all through this class (``to_json`` / ``from_json``)."""

    policy_version: int = 0
    weights_manifest: str | None = None  # s3://bucket/prefix/v.../manifest.json of policy_version
    curriculum_stage: int = 0
    counters: dict[str, int] = field(default_factory=dict)  # steps, samples, prompts, …
    metrics: JobMetrics = field(default_factory=JobMetrics)
    # The latest held-out evaluation: {"step", "policy_version", "metrics": {"eval/<dataset>/<score>": value}}.
    evaluation: dict | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> JobState:
        raw = json.loads(data)
        metrics = JobMetrics(**(raw.pop("metrics", None) or {}))
        return cls(**raw, metrics=metrics)
