"""How long a failed create or update handler waits before kopf runs it again. Pure."""

from __future__ import annotations


def retry_delay(attempt: int, first_s: float = 1.0, cap_s: float = 30.0) -> float:
    """1, 2, 4, … seconds, at most `cap_s`: a busy API server gets room, and a job applied
    during a take-over is not left without children for kopf's default minute."""
    return min(cap_s, first_s * 2 ** max(attempt, 0))
