"""Dynamic sampling: which groups carry a learning signal. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def has_signal(rewards: Sequence[float], tol: float = 1e-8) -> bool:
    """A group teaches something only if its rewards differ (else every advantage is 0)."""
    return len(rewards) > 1 and max(rewards) - min(rewards) > tol


def prompts_to_request(groups_needed: int, groups_ready: int, prompts_in_flight: int,
                       over_sampling_factor: float = 1.0, keep_rate: float | None = None,
                       min_keep_rate: float = 0.05) -> int:
    """How many more prompts to issue so the next batch fills despite dropped groups.

    Each issued prompt is expected to yield ``keep_rate`` usable groups (the observed share
    with signal; 1 when unknown). We aim for ``over_sampling_factor`` times the missing
    groups and subtract what is already in flight.
    """
    missing = groups_needed - groups_ready
    if missing <= 0:
        return 0
    rate = max(keep_rate if keep_rate is not None else 1.0, min_keep_rate)
    return max(0, math.ceil(missing * over_sampling_factor / rate) - prompts_in_flight)


@dataclass
class GroupCollector:
    """Assemble samples into complete groups; with dynamic sampling, drop flat ones.

    ``add`` takes anything with ``group_id`` and ``reward`` (a buffer Trajectory).
    """

    group_size: int
    dynamic_sampling: bool = True
    partial: dict[str, list[Any]] = field(default_factory=dict)
    ready: list[list[Any]] = field(default_factory=list)
    kept: int = 0
    dropped: int = 0

    def add(self, sample: Any) -> list[Any] | None:
        """Returns the completed group when this sample completes one (kept or not)."""
        group = self.partial.setdefault(sample.group_id, [])
        group.append(sample)
        if len(group) < self.group_size:
            return None
        del self.partial[sample.group_id]
        if self.dynamic_sampling and not has_signal([s.reward for s in group]):
            self.dropped += 1
        else:
            self.kept += 1
            self.ready.append(group)
        return group

    @property
    def keep_rate(self) -> float | None:
        seen = self.kept + self.dropped
        return self.kept / seen if seen else None

    def take(self, n_groups: int) -> list[list[Any]] | None:
        """Exactly ``n_groups`` groups (oldest first) when that many are ready, else None."""
        if len(self.ready) < n_groups:
            return None
        out, self.ready = self.ready[:n_groups], self.ready[n_groups:]
        return out
