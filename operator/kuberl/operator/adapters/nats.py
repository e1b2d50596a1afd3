"""The operator's window onto each job's JetStream buffer, for synchronous handlers.

kopf runs our handlers in worker threads; nats-py is asyncio. One background thread runs
an event loop holding one long-lived connection per NATS URL (jobs usually share a
server), and the handlers submit coroutines to it with a timeout. A URL that cannot be
reached is not retried for a short while, so a job pointing at a dead server does not
stall every reconcile.

Each job authenticates with its own credentials Secret (spec.buffer.credentialsSecret, read
by the controller and passed in as its keys), so connections are keyed by URL and
credentials: two jobs on one server share a connection only when their credentials match.
The operator's connections reconnect a few times and then close; the next call opens a new
one. A URL appears in messages without any user or password in it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import hashlib
import json
import time
from collections.abc import Coroutine, Mapping
from typing import Any

import nats
import nats.js.errors

from kuberl.workloads.buffer.admin import (
    BufferConfig,
    backlog,
    delete_streams,
    ensure_job,
)
from kuberl.operator.decisions.access import redact_url
from kuberl.workloads.buffer.auth import auth_options, process_auth_options
from kuberl.workloads.buffer.kv import JobStateStore
from kuberl.workloads.buffer.names import JobNames
from kuberl.workloads.buffer.state import JobState
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)


class NatsUnavailable(Exception):
    pass


def _connection_key(url: str, auth: Mapping[str, str] | None) -> str:
    """The URL plus a digest of the credentials (never the credentials themselves)."""
    if not auth:
        return url
    digest = hashlib.sha256(json.dumps(sorted(auth.items())).encode()).hexdigest()[:16]
    return f"{url}#{digest}"


def _describe(error: Exception, seen: list[Exception]) -> str:
    """The reason to show: the server's authorization refusal when there was one (nats-py
    reports it to the error callback, then raises a generic error), else the error itself."""
    for earlier in [error, *reversed(seen)]:
        text = str(earlier)
        if "authorization" in text.lower():
            return f"authorization refused ({text}); check the job's spec.buffer.credentialsSecret"
    return str(error) or type(error).__name__


class NatsBridge:
    def __init__(self, timeout_s: float = 3.0, retry_after_s: float = 10.0):
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kuberl-nats", daemon=True)
        self._thread.start()
        self._conns: dict[str, Any] = {}
        self._kvs: dict[tuple[str, str], tuple[Any, Any]] = {}  # (connection key, bucket) -> (connection, bound bucket)
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

    async def _js(self, url: str, auth: Mapping[str, str] | None):
        key = _connection_key(url, auth)
        down = self._down_until.get(key)
        if down and time.monotonic() < down:
            raise NatsUnavailable(f"{redact_url(url)} was unreachable; retrying after a pause")
        async with self._lock:  # one connection per URL and credentials even when many reconciles start at once
            return await self._connect(url, auth, key)

    async def _connect(self, url: str, auth: Mapping[str, str] | None, key: str):
        nc = self._conns.get(key)
        if nc is not None and not nc.is_closed:
            return nc.jetstream(timeout=self.timeout_s)
        seen: list[Exception] = []

        async def remember(error: Exception) -> None:
            # nats-py logs every failed attempt with a traceback unless given a callback, and
            # ends with "no servers available": keep the server's own reason to report it once.
            seen.append(error)

        try:
            # The job's own credentials; without them, the operator's (a mounted Secret, if any).
            options = auth_options(auth) if auth is not None else process_auth_options()
            # Few reconnect attempts: nats-py spends them on the first connect too, and a
            # closed connection is simply opened again by the next call.
            nc = await nats.connect(servers=[url], connect_timeout=self.timeout_s, max_reconnect_attempts=2,
                                    reconnect_time_wait=0.5, allow_reconnect=True, name="kuberl-operator",
                                    error_cb=remember, **options)
        except Exception as e:  # noqa: BLE001 (nats-py raises several unrelated types)
            self._down_until[key] = time.monotonic() + self.retry_after_s
            raise NatsUnavailable(f"cannot connect to {redact_url(url)}: {_describe(e, seen)}") from e
        self._conns[key] = nc
        return nc.jetstream(timeout=self.timeout_s)

    async def _kv(self, url: str, auth: Mapping[str, str] | None, bucket: str):
        """A job's KV bucket, bound once per connection: binding asks the server for the
        stream's info, a JetStream API call that every status round would otherwise repeat."""
        js = await self._js(url, auth)
        key = (_connection_key(url, auth), bucket)
        nc = self._conns.get(key[0])
        bound = self._kvs.get(key)
        if bound is None or bound[0] is not nc:
            bound = self._kvs[key] = (nc, await js.key_value(bucket))
        return bound[1]

    # -- what the handlers need ----------------------------------------------------------

    def ensure_job(self, url: str, namespace: str, name: str, cfg: BufferConfig,
                   auth: Mapping[str, str] | None = None) -> None:
        async def go():
            await ensure_job(await self._js(url, auth), JobNames.for_job(namespace, name), cfg)

        self._run(go())

    def delete_job(self, url: str, namespace: str, name: str, auth: Mapping[str, str] | None = None) -> list[str]:
        async def go():
            names = JobNames.for_job(namespace, name)
            self._kvs.pop((_connection_key(url, auth), names.kv_bucket), None)
            return await delete_streams(await self._js(url, auth), names)

        return self._run(go())

    def job_state(self, url: str, namespace: str, name: str, auth: Mapping[str, str] | None = None) -> JobState | None:
        """The job-state document the trainer keeps in KV; None before it is written."""

        async def go():
            kv = await self._kv(url, auth, JobNames.for_job(namespace, name).kv_bucket)
            state, revision = await JobStateStore(kv).get()
            return state if revision else None

        return self._run(go())

    def agent_versions(self, url: str, namespace: str, name: str, agents: list[str],
                       auth: Mapping[str, str] | None = None) -> dict[str, int]:
        """{rollout agent (pod name): the policy version it last loaded} of `agents`, as they report them."""

        async def go():
            kv = await self._kv(url, auth, JobNames.for_job(namespace, name).kv_bucket)
            return await JobStateStore(kv).agent_versions(agents)

        return self._run(go())

    def backlog(self, url: str, namespace: str, name: str, auth: Mapping[str, str] | None = None) -> dict[str, int]:
        """Messages not yet handed out from the job's streams (`buffer.admin.backlog`)."""

        async def go():
            return await backlog(await self._js(url, auth), JobNames.for_job(namespace, name))

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
