"""Async front of an engine: concurrent requests meet in one batched call; weight swaps between batches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from kuberl.workloads.engines.base import Completion, Engine, GenerationRequest


class EngineObserver(Protocol):
    """Who watches an engine's traffic (the rollout agent's Prometheus series)."""

    def request_started(self) -> float: ...
    def request_finished(self, started: float, tokens: int) -> None: ...
    def request_failed(self) -> None: ...
    def engine_call(self, ok: bool) -> None: ...


class BatchingEngine:
    """Async front of an `Engine`: queued requests run together; weight swaps run between batches."""

    def __init__(self, engine: Engine, linger_s: float = 0.002, observer: EngineObserver | None = None):
        self.engine, self.linger_s, self.observer = engine, linger_s, observer
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._running: set[int] = set()  # id() of the requests in the engine call now running
        self._engine_call: asyncio.Future | None = None
        self.rows_aborted = 0  # rows the engine was told to stop because their waiter went away

    @property
    def policy_version(self) -> int:
        return self.engine.policy_version

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="kuberl-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        # The engine call the loop was in runs on in its thread: let it end before the caller
        # closes the engine under it (a weight swap cut off there leaves the server on a
        # version the engine never recorded).
        if self._engine_call is not None and not self._engine_call.done():
            try:
                await self._engine_call
            except Exception:  # noqa: BLE001, S110 (its waiters are gone; stopping anyway)
                pass
        self._engine_call = None

    async def _in_thread(self, fn, *args):
        """Run an engine call in a worker thread; a cancelled loop leaves it to `stop` to await."""
        self._engine_call = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        return await asyncio.shield(self._engine_call)

    async def generate(self, request: GenerationRequest,
                       on_dispatch: Callable[[int], None] | None = None) -> list[Completion]:
        """Completions of ``request``; ``on_dispatch(version)`` is called as its batch starts on the engine."""
        self.start()
        fut = asyncio.get_running_loop().create_future()
        started = self.observer.request_started() if self.observer is not None else 0.0
        await self._queue.put(("generate", (request, on_dispatch), fut))
        result: list[Completion] | None = None
        try:
            result = await fut
            return result
        except asyncio.CancelledError:
            # Nobody wants these tokens any more (an abandoned group): stop decoding them if
            # the engine can, so the rest of the batch finishes sooner. A queued request is
            # simply skipped when its batch is formed.
            if id(request) in self._running:
                self.rows_aborted += await asyncio.shield(asyncio.to_thread(self.engine.abort, [request]))
            raise
        finally:
            if self.observer is not None:
                if result is not None:
                    self.observer.request_finished(started, sum(len(c.token_ids) for c in result))
                else:
                    self.observer.request_failed()

    async def swap(self, weights, version: int) -> None:
        """Load new weights once the batch now running finishes (the 'pause' policy):
        HF-named tensors, or the `Path` of a fetched checkpoint directory (`Engine.load_dir`)."""
        self.start()
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(("swap", (weights, version), fut))
        await fut

    def _engine_ok(self, ok: bool) -> None:
        if self.observer is not None:
            self.observer.engine_call(ok)

    async def _loop(self) -> None:
        while True:
            items = [await self._queue.get()]
            await asyncio.sleep(self.linger_s)  # let concurrent episodes add their requests
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            gens = [(arg, fut) for kind, arg,
                    fut in items if kind == "generate" and not fut.done()]  # done: its waiter was cancelled
            # New weights first: requests that waited alongside a swap get the fresher policy
            # (and a group re-queued after its stale attempt is not generated stale again).
            for (weights, version), fut in [(arg, fut) for kind, arg, fut in items if kind == "swap"]:
                try:
                    load = self.engine.load_dir if isinstance(weights, Path) else self.engine.load_state_dict
                    await self._in_thread(load, weights, version)
                    fut.set_result(None)
                except Exception as e:
                    self._engine_ok(False)
                    fut.set_exception(e)
            if gens:
                version = self.engine.policy_version  # swaps run between batches, never during one
                for (_, on_dispatch), _ in gens:
                    if on_dispatch is not None:
                        on_dispatch(version)
                self._running = {id(r) for (r, _), _ in gens}
                try:
                    results = await self._in_thread(self.engine.generate, [r for (r, _), _ in gens])
                    self._engine_ok(True)
                    for (_, fut), res in zip(gens, results, strict=True):
                        if not fut.done():
                            fut.set_result(res)
                except Exception as e:  # every waiter learns about the failure
                    self._engine_ok(False)
                    for _, fut in gens:
                        if not fut.done():
                            fut.set_exception(e)
                finally:
                    self._running = set()


class DispatchTracker:
    """A `BatchingEngine` as one group sees it, noting the policy version of the group's first batch.

    Versions only move forward, so that first batch's version is the oldest any of the
    group's tokens carry — the version the trainer judges the group's staleness by.
    """

    def __init__(self, batcher: BatchingEngine):
        self._batcher = batcher
        self.first_version: int | None = None
        self.dispatched = asyncio.Event()

    @property
    def policy_version(self) -> int:
        return self._batcher.policy_version

    def _note(self, version: int) -> None:
        if self.first_version is None:
            self.first_version = version
            self.dispatched.set()

    async def generate(self, request: GenerationRequest) -> list[Completion]:
        return await self._batcher.generate(request, on_dispatch=self._note)
