"""What the sweeper (controllers.sweeper) borrows from kopf's reactor: whether this replica
serves or is paused in favour of another, and the queue kopf posts Kubernetes Events from.

Replicas elect a leader through kopf's peering; a standby keeps its watches closed and runs
no handler until the leader is gone. kopf's own timers follow that state; the sweeper,
which replaces them, must follow it too, or two replicas would run rounds at once. kopf
keeps the state in a toggle set it creates inside `kopf.run` and hands to its daemon killer
and nowhere public, so `install` wraps kopf's `daemon_killer` to keep a reference to it
(same signature; the original still runs).

`kopf.event` posts through a queue kopf sets in each object's task context, which the
sweeper's task is not: `remember_event_queue` (called from a watch handler, in such a
context) keeps it and `restore_event_queue` sets it in the sweeper's.

Both lean on kopf internals of the version pinned in pyproject.toml;
tests/operator/adapters/test_kopf_reactor.py runs them against the installed kopf and
tests/cluster/test_operator_peering.py watches a standby stay idle.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kopf._cogs.aiokits import aiotoggles
from kopf._core.engines import daemons, posting

_paused: aiotoggles.ToggleSet | None = None
_original_killer = daemons.daemon_killer
_event_queue: tuple[Any, asyncio.AbstractEventLoop] | None = None


def _remembering_killer(*, operator_paused: aiotoggles.ToggleSet, **kwargs: Any):
    global _paused
    _paused = operator_paused
    return _original_killer(operator_paused=operator_paused, **kwargs)


def install() -> None:
    """Wrap kopf's daemon killer (idempotent); call before `kopf.run`."""
    daemons.daemon_killer = _remembering_killer  # type: ignore[assignment]


def serving() -> bool:
    """True unless kopf is paused. Also true when kopf never ran through `install`'s wrapper
    (a test that drives the handlers directly): nothing could then pause it."""
    return _paused is None or _paused.is_off()


async def until_serving() -> None:
    """Return once kopf serves (at once when it does)."""
    if _paused is not None:
        await _paused.wait_for(False)


def remember_event_queue() -> None:
    """Keep kopf's event queue, from a handler's context (cheap after the first call)."""
    global _event_queue
    if _event_queue is None:
        try:
            _event_queue = (posting.event_queue_var.get(), posting.event_queue_loop_var.get())
        except LookupError:  # not in a kopf handler's context
            pass


def restore_event_queue() -> bool:
    """Set kopf's event queue in the current context; False while none was remembered."""
    if _event_queue is None:
        return False
    posting.event_queue_var.set(_event_queue[0])
    posting.event_queue_loop_var.set(_event_queue[1])
    return True
