"""When a reconcile may skip re-asserting a child it asserted before: a pure cache.

Timer rounds run every few seconds for every object. Re-asserting each child with a
create-or-get (POST, 409, GET) every round is two API calls per child per tick for
nothing, almost always. The cache remembers, per child, the digest of the manifest last
asserted and when; a timer round skips the child while the digest is unchanged and the
assertion is younger than the resync period. Change events (create, update, resume)
always assert, a changed desired manifest always asserts, and every child is asserted
again at least once per period — so a child deleted behind the operator's back comes
back within that period, and nothing is remembered that a restart would need (a new
process starts with an empty cache and asserts everything once).
"""

from __future__ import annotations

import threading


class EnsureCache:
    def __init__(self, period_s: float):
        self.period_s = period_s
        self._seen: dict[tuple[str, str], tuple[str, float]] = {}  # (owner uid, child key) -> (digest, time)
        self._lock = threading.Lock()

    def fresh(self, owner: str, child: str, digest: str, now: float) -> bool:
        """True when `child` was asserted with this digest less than a period ago (skip it)."""
        with self._lock:
            seen = self._seen.get((owner, child))
        return seen is not None and seen[0] == digest and now - seen[1] < self.period_s

    def asserted(self, owner: str, child: str, digest: str, now: float) -> None:
        with self._lock:
            self._seen[(owner, child)] = (digest, now)

    def invalidate(self, owner: str, child: str | None = None) -> None:
        """Forget one child of `owner`, or all of them (owner deleted)."""
        with self._lock:
            for key in [k for k in self._seen if k[0] == owner and (child is None or k[1] == child)]:
                del self._seen[key]
