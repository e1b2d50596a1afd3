"""A job's streams and KV bucket: their settings (BufferConfig), creation and deletion."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from kuberl.workloads.buffer.names import JobNames
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class BufferConfig:
    """Stream and consumer settings; defaults fit one job on a small cluster."""

    storage: api.StorageType = api.StorageType.FILE
    replicas: int = 1
    duplicate_window_s: float = 600.0  # server-side de-dup of retried publishes
    prompt_backlog_limit: int = 100_000  # prompts stream max_msgs; publishes beyond it fail
    max_in_flight_prompts: int = 256  # prompts handed to rollout agents and not yet acked
    prompt_ack_wait_s: float = 600.0  # an agent that dies gives its prompt back after this
    trajectory_ack_wait_s: float = 300.0  # must exceed one optimizer step; keepalive() extends
    trajectory_max_ack_pending: int = 65_536
    trajectories_max_bytes: int = -1
    publish_timeout_s: float = 10.0
    publish_retry_for_s: float = 120.0  # keep retrying a publish this long (server restarts)


async def connect(servers: str | Sequence[str], **kwargs) -> nats.NATS:
    """A connection that rides out server restarts (reconnects forever, buffers meanwhile)."""
    opts = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.5, "connect_timeout": 5, "name": "kuberl"}
    opts.update(kwargs)
    return await nats.connect(servers=list([servers] if isinstance(servers, str) else servers), **opts)


async def ensure_job(js, names: JobNames, cfg: BufferConfig = BufferConfig()) -> None:
    """Create (or update) the job's streams and KV bucket; idempotent."""
    prompts = api.StreamConfig(
        name=names.prompts_stream,
        subjects=[names.prompts_subject],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=cfg.storage,
        num_replicas=cfg.replicas,
        max_msgs=cfg.prompt_backlog_limit,
        discard=api.DiscardPolicy.NEW,  # full backlog → publish fails → the feeder slows down
        duplicate_window=cfg.duplicate_window_s,
    )
    trajectories = api.StreamConfig(
        name=names.trajectories_stream,
        subjects=[names.trajectories_subject],
        retention=api.RetentionPolicy.WORK_QUEUE,  # acked samples are gone: disk stays bounded
        storage=cfg.storage,
        num_replicas=cfg.replicas,
        max_bytes=cfg.trajectories_max_bytes,
        discard=api.DiscardPolicy.NEW,  # never silently drop unconsumed samples
        duplicate_window=cfg.duplicate_window_s,
    )
    for sc in (prompts, trajectories):
        try:
            await js.add_stream(sc)
        except nats.js.errors.BadRequestError:
            await js.update_stream(sc)  # exists with an older config
    try:
        await js.key_value(names.kv_bucket)
    except nats.js.errors.BucketNotFoundError:
        await js.create_key_value(bucket=names.kv_bucket, history=8, storage=cfg.storage, replicas=cfg.replicas)


async def delete_job(servers: str | Sequence[str], namespace: str, name: str) -> list[str]:
    """Delete every stream (and the KV bucket) of a job; returns the names that existed."""
    names = JobNames.for_job(namespace, name)
    nc = await nats.connect(servers=list([servers] if isinstance(servers, str) else servers),
                            max_reconnect_attempts=2, connect_timeout=5)
    deleted = []
    try:
        js = nc.jetstream()
        for stream in names.streams():
            try:
                await js.delete_stream(stream)
                deleted.append(stream)
            except nats.js.errors.NotFoundError:
                pass
    finally:
        await nc.close()
    log.info("job streams deleted", namespace=namespace, name=name, streams=deleted)
    return deleted


def delete_job_sync(servers: str | Sequence[str], namespace: str, name: str, timeout: float = 30) -> list[str]:
    """:func:`delete_job` for synchronous callers (the operator's finaliser).

    Runs on a private event loop in a worker thread, so it also works when the caller's
    thread already runs a loop (kopf's).
    """
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["ok"] = asyncio.run(asyncio.wait_for(delete_job(servers, namespace, name), timeout))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            result["err"] = e

    t = threading.Thread(target=run, name="kuberl-delete-job", daemon=True)
    t.start()
    t.join(timeout + 5)
    if "err" in result:
        raise result["err"]
    if "ok" not in result:
        raise TimeoutError(f"deleting streams of {namespace}/{name} took over {timeout}s")
    return result["ok"]
