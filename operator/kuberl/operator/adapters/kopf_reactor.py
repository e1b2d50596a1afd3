"""What the sweeper (controllers.sweeper) borrows from kopf's reactor: whether this replica
serves or is paused in favour of another, whether kopf has indexed every watched object
once, and the queue kopf posts Kubernetes Events from.

Replicas elect a leader through kopf's peering; a standby keeps its watches closed and runs
no handler until the leader is gone. Before any handler runs, kopf also waits until each
indexed kind's first listing is in its index (a standby lists at its take-over). kopf's own
timers follow both; the sweeper, which replaces them, must too: two replicas must never run
rounds at once, and a round on a half-listed watch cache finds children missing and asks
the API server for each (at a 500-job take-over, thousands of requests while new jobs wait).
kopf keeps both states in toggle sets it creates inside `kopf.run` and hands to each
resource watcher, and nowhere public, so `install` wraps kopf's `queueing.watcher` to keep a
reference to them (same signature; the original runs).

`kopf.event` posts through a queue kopf sets in each object's task context, which the
sweeper's task is not: `remember_event_queue` (called from a watch handler, in such a
context) keeps it and `restore_event_queue` sets it in the sweeper's.

All of it leans on kopf internals of the version pinned in pyproject.toml;
tests/operator/adapters/test_kopf_reactor.py runs it against the installed kopf and
tests/cluster/test_operator_peering.py watches a standby stay idle.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kopf._cogs.aiokits import aiotoggles
from kopf._core.engines import posting
from kopf._core.reactor import queueing

_paused: aiotoggles.ToggleSet | None = None  # any(): on while some peering says another replica leads
_indexed: aiotoggles.ToggleSet | None = None  # all(): on once every indexed kind's first listing is indexed
_original_watcher = queueing.watcher
_event_queue: tuple[Any, asyncio.AbstractEventLoop] | None = None


def _remembering_watcher(*, operator_paused: aiotoggles.ToggleSet | None = None,
                         operator_indexed: aiotoggles.ToggleSet | None = None, **kwargs: Any):
    global _paused, _indexed
    # Resource watchers carry both sets (one of each per operator); peering watchers neither.
    _paused = operator_paused if operator_paused is not None else _paused
    _indexed = operator_indexed if operator_indexed is not None else _indexed
    return _original_watcher(operator_paused=operator_paused, operator_indexed=operator_indexed, **kwargs)


def install() -> None:
    """Wrap kopf's resource watcher (idempotent); call before `kopf.run`."""
    queueing.watcher = _remembering_watcher  # type: ignore[assignment]


def serving() -> bool:
    """Not paused in favour of another replica. Also true where kopf never ran through
    `install`'s wrapper (a test that drives the handlers directly): nothing could pause it."""
    return _paused is None or _paused.is_off()


def indexed() -> bool:
    """Every indexed kind's first listing is in kopf's indices (or kopf never said)."""
    return _indexed is None or _indexed.is_on()


async def until_serving() -> None:
    if _paused is not None:
        await _paused.wait_for(False)


async def until_indexed() -> None:
    if _indexed is not None:
        await _indexed.wait_for(True)


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
