"""Dynamic sampling: which groups carry a learning signal. Pure."""

from __future__ import annotations

from collections.abc import Sequence


def has_signal(rewards: Sequence[float], tol: float = 1e-8) -> bool:
    """A group teaches something only if its rewards differ (else every advantage is 0)."""
    return len(rewards) > 1 and max(rewards) - min(rewards) > tol
