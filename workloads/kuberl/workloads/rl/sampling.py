"""Dynamic sampling: which groups carry a learning signal. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from kuberl.workloads.buffer.records import Trajectory
from kuberl.workloads.rl.advantages import FLAT_TOLERANCE


def has_signal(rewards: Sequence[float], tol: float = FLAT_TOLERANCE) -> bool:
    """A group teaches something only if its advantages are not all 0: at least two rewards
    spanning more than the tolerance `group_advantages` calls flat."""
    return len(rewards) > 1 and max(rewards) - min(rewards) > tol


def group_has_signal(group: Sequence[Trajectory]) -> bool:
    """`has_signal` over the samples that were scored (infrastructure failures have no reward)."""
    return has_signal([t.reward for t in group if t.failure is None])
