"""Trajectories into whole groups, and how many prompts to keep in flight."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kuberl.workloads.buffer.records import Trajectory
from kuberl.workloads.buffer.staleness import staleness_weight
from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.rl.sampling import group_has_signal


@dataclass
class GroupAssembler:
    """Samples → whole groups; tracks which prompts are answered (other attempts then ignored)."""

    dynamic_sampling: bool
    partial: dict[str, list[Trajectory]] = field(default_factory=dict)
    ready: list[list[Trajectory]] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    kept: int = 0
    dropped: int = 0
    last_dropped: bool = False

    def add(self, t: Trajectory) -> str | None:
        """Returns the prompt id when ``t`` completes its group (`last_dropped` says whether
        dynamic sampling dropped it)."""
        if t.prompt_id in self.answered:
            return None
        group = self.partial.setdefault(t.group_id, [])
        if any(s.sample_id == t.sample_id for s in group):
            return None
        group.append(t)
        if len(group) < int(t.meta.get("group_size", 1)):
            return None
        del self.partial[t.group_id]
        self.answered.add(t.prompt_id)
        self.last_dropped = self.dynamic_sampling and not group_has_signal(group)
        if self.last_dropped:
            self.dropped += 1
        else:
            self.kept += 1
            self.ready.append(group)
        return t.prompt_id

    def ready_samples(self) -> int:
        return sum(len(g) for g in self.ready)

    def drop_untrainable(self, current_version: int, max_off_policy_steps: int,
                         rule: dict | None = None) -> list[list[Trajectory]]:
        """Evict ready groups that aged past the staleness bound while waiting; returns them.

        Done before the batch is counted, so a step always trains a full batch of groups
        it can use (their prompts are answered already: the feeder replaces them).
        """
        keep = [g for g in self.ready
                if staleness_weight(min(t.policy_version for t in g), current_version, max_off_policy_steps,
                                    **(rule or {})) is not None]
        dropped = [g for g in self.ready if not any(g is k for k in keep)]
        self.ready = keep
        return dropped

    def take(self, max_samples: int) -> list[list[Trajectory]]:
        """Whole groups up to ``max_samples``, oldest policy version first: the groups closest
        to the staleness bound are trained now, fresher ones can still wait a step."""
        self.ready.sort(key=lambda g: min(t.policy_version for t in g))  # stable: arrival order within a version
        out, n = [], 0
        while self.ready and (not out or n + len(self.ready[0]) <= max_samples):
            g = self.ready.pop(0)
            out.append(g)
            n += len(g)
        return out

    @property
    def keep_rate(self) -> float | None:
        seen = self.kept + self.dropped
        return self.kept / seen if seen else None


def staleness_weights(trajectories: list[Trajectory], version: int, max_off_policy_steps: int,
                      rule: dict) -> dict[str, float]:
    """Each sample's loss weight when trained from policy ``version`` (its staleness
    policy's weight; 0 for one that is past it, which the assembler evicts before)."""
    return {t.sample_id: staleness_weight(t.policy_version, version, max_off_policy_steps,
                                          **rule) or 0.0 for t in trajectories}


def in_flight_target(cfg: WorkloadConfig, group_size: int, keep_rate: float | None) -> int:
    """Prompts to keep issued: enough for (1 + maxOffPolicySteps) steps, so staleness stays bounded by construction."""
    per_step = max(1, cfg.algorithm.global_batch_size // group_size)
    factor = cfg.algorithm.over_sampling_factor if cfg.algorithm.dynamic_sampling else 1.0
    rate = max(1.0 if keep_rate is None else keep_rate,
               0.1) if cfg.algorithm.dynamic_sampling else 1.0  # 0 kept so far: over-sample the most
    return min(cfg.buffer.max_in_flight_prompts, math.ceil(per_step * factor / rate * (1 + cfg.max_off_policy_steps)))
