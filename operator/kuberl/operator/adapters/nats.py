"""The operator's window onto each job's JetStream buffer, for synchronous handlers.

kopf runs our handlers in worker threads; nats-py is asyncio. One background thread runs
an event loop holding one long-lived connection per NATS URL (jobs usually share a
server), and the handlers submit coroutines to it with a timeout. A URL that cannot be
reached is not retried for a short while, so a job pointing at a dead server does not
stall every reconcile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Coroutine
from typing import Any

import nats
import nats.js.errors

from kuberl.workloads.buffer.admin import (
    BufferConfig,
    backlog,
    delete_streams,
    ensure_job,
)
from kuberl.workloads.buffer.kv import JobStateStore
from kuberl.workloads.buffer.names import JobNames
from kuberl.workloads.buffer.state import JobState
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)


class NatsUnavailable(Exception):
    pass


class NatsBridge:
    def __init__(self, timeout_s: float = 3.0, retry_after_s: float = 10.0):
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kuberl-nats", daemon=True)
        self._thread.start()
        self._conns: dict[str, Any] = {}
        self._down_until: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    def _run(self, coro: Coroutine, timeout: float | None = None) -> Any:
        budget = timeout or self.timeout_s * 2
        if self._closed:
            coro.close()
            raise NatsUnavailable("the operator is shutting down")
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, budget), self._loop)
        try:
            # A bound here too: once close() stops the loop, a pending future would never
            # complete and its handler thread would keep the process from exiting.
            return future.result(timeout=budget + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise NatsUnavailable(f"no answer from NATS within {budget:.0f}s") from None

    async def _js(self, url: str):
        down = self._down_until.get(url)
        if down and time.monotonic() < down:
            raise NatsUnavailable(f"{url} was unreachable; retrying after a pause")
        async with self._lock:  # one connection per URL even when many reconciles start at once
            return await self._connect(url)

    async def _connect(self, url: str):
        nc = self._conns.get(url)
        if nc is not None and not nc.is_closed:
            return nc.jetstream(timeout=self.timeout_s)
        try:
            nc = await nats.connect(servers=[url], connect_timeout=self.timeout_s, max_reconnect_attempts=-1,
                                    reconnect_time_wait=1, allow_reconnect=True, name="kuberl-operator")
        except Exception as e:  # noqa: BLE001 (nats-py raises several unrelated types)
            self._down_until[url] = time.monotonic() + self.retry_after_s
            raise NatsUnavailable(f"cannot connect to {url}: {e}") from e
        self._conns[url] = nc
        return nc.jetstream(timeout=self.timeout_s)

    # -- what the handlers need ----------------------------------------------------------

    def ensure_job(self, url: str, namespace: str, name: str, cfg: BufferConfig) -> None:
        async def go():
            await ensure_job(await self._js(url), JobNames.for_job(namespace, name), cfg)

        self._run(go())

    def delete_job(self, url: str, namespace: str, name: str) -> list[str]:
        async def go():
            return await delete_streams(await self._js(url), JobNames.for_job(namespace, name))

        return self._run(go())

    def job_state(self, url: str, namespace: str, name: str) -> JobState | None:
        """The job-state document the trainer keeps in KV; None before it is written."""

        async def go():
            kv = await (await self._js(url)).key_value(JobNames.for_job(namespace, name).kv_bucket)
            state, revision = await JobStateStore(kv).get()
            return state if revision else None

        return self._run(go())

    def backlog(self, url: str, namespace: str, name: str) -> dict[str, int]:
        """Messages not yet handed out from the job's streams (`buffer.admin.backlog`)."""

        async def go():
            return await backlog(await self._js(url), JobNames.for_job(namespace, name))

        return self._run(go())

    def close(self) -> None:
        async def go():
            for nc in self._conns.values():
                try:
                    await nc.close()
                except Exception:  # noqa: BLE001
                    pass

        try:
            self._run(go(), timeout=5)
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
