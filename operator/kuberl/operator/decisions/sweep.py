"""Which objects get a periodic round now: the sweeper's schedule. Pure.

One sweeper per kind replaces kopf's per-object timers (controllers.sweeper): at 500 jobs
those were 1,500 timer tasks whose invocations kept kopf's event loop busy, and a standby
that took over worked through a standing backlog for minutes. The schedule is a plain
mapping of object uid → when its next round is due; each tick it is brought up to date
with the objects present and the rounds still running, and names what to start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Tick:
    start: tuple[str, ...]  # uids whose round starts now, most overdue first
    next_due: dict[str, float]  # the schedule after this tick


def plan_tick(next_due: Mapping[str, float], present: Iterable[str], running: Iterable[str], now: float,
              interval_s: float, capacity: int, first_offset: Callable[[], float]) -> Tick:
    """One tick of a kind's schedule.

    * An object seen for the first time is due after `first_offset()` intervals (in [0, 1]):
      random for what a listing found (a take-over listing 500 jobs spreads their rounds
      over one interval instead of starting them together), 1 for an object created since
      (its create handler has just reconciled it).
    * An object gone from `present` leaves the schedule.
    * A due object whose round is still `running` waits: one round per object at a time.
    * At most `capacity` rounds start, the most overdue first; the rest stay due and start
      on a later tick (back-pressure instead of a queue that grows behind busy threads).
    * A started round is next due one interval from now.
    """
    running = set(running)
    schedule: dict[str, float] = {}
    for uid in present:
        schedule[uid] = next_due[uid] if uid in next_due else now + first_offset() * interval_s
    due = sorted((when, uid) for uid, when in schedule.items() if when <= now and uid not in running)
    start = tuple(uid for _, uid in due[:max(capacity, 0)])
    for uid in start:
        schedule[uid] = now + interval_s
    return Tick(start=start, next_due=schedule)


def tick_period(intervals_s: Iterable[float], longest_s: float = 1.0) -> float:
    """How often the sweeper looks: half the shortest interval (a round is at most half a
    period late), at most `longest_s`."""
    return min([longest_s, *(i / 2 for i in intervals_s)])
