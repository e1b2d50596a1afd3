"""asyncio helpers for tests."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task, within_s: float = 60.0) -> BaseException | None:
    """Cancel ``task`` until it ends; returns how it ended (None: it returned).

    One cancel is not always enough on Python 3.11: `asyncio.wait_for` (used inside
    nats-py's fetch) can swallow a cancellation that lands as its inner future completes,
    and a loop around such a call then runs on. Re-cancelling until the task is done keeps
    a teardown from hanging on that race.
    """
    deadline = asyncio.get_running_loop().time() + within_s
    while not task.done():
        assert asyncio.get_running_loop().time() < deadline, f"{task.get_name()} did not stop within {within_s}s"
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if task.cancelled():
        return asyncio.CancelledError()
    return task.exception()


async def wait_until(what: str, predicate, timeout: float = 60.0, interval: float = 0.05) -> None:
    """The event-loop twin of fixtures_cluster.wait_until: poll ``predicate`` without blocking the loop."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(interval)
