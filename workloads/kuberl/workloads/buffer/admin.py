"""A job's streams and KV bucket: their settings (BufferConfig), creation and deletion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from kuberl.workloads.buffer.auth import process_auth_options
from kuberl.workloads.buffer.names import JobNames
from kuberl.workloads.logs import get_logger
from kuberl.workloads.spec import BufferSpec

log = get_logger(__name__)


# How long a prompt an agent leased may go without a keepalive before the server hands it
# to another agent (agents renew theirs every few seconds), and the same for a fetched
# trajectory the trainer has not acked (a step longer than this renews with keepalive()).
PROMPT_ACK_WAIT_S = 30.0
TRAJECTORY_ACK_WAIT_S = 120.0


@dataclass(frozen=True)
class BufferConfig:
    """Stream and consumer settings. Built once, from the job's spec.buffer (`from_spec`):
    the operator creates the streams with it and every process opens its consumers with it."""

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

    @classmethod
    def from_spec(cls, spec: BufferSpec) -> BufferConfig:
        """The job's settings: what spec.buffer says, and kuberl's choices for the rest."""
        return cls(replicas=spec.stream_replicas, max_in_flight_prompts=spec.max_in_flight_prompts,
                   trajectories_max_bytes=spec.max_stream_bytes, prompt_ack_wait_s=PROMPT_ACK_WAIT_S,
                   trajectory_ack_wait_s=TRAJECTORY_ACK_WAIT_S)


async def connect(servers: str | Sequence[str], **kwargs) -> nats.NATS:
    """A connection that rides out server restarts (reconnects forever, buffers meanwhile)."""
    opts = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.5, "connect_timeout": 5, "name": "kuberl",
            **process_auth_options()}
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


async def create_job_streams(url: str, namespace: str, name: str, cfg: BufferConfig) -> None:
    """Create a job's streams over a connection of its own (`kuberl run` and tests; the
    operator does the same through its long-lived connection)."""
    nc = await connect(url, max_reconnect_attempts=2)
    try:
        await ensure_job(nc.jetstream(), JobNames.for_job(namespace, name), cfg)
    finally:
        await nc.close()


async def delete_streams(js, names: JobNames) -> list[str]:
    """Delete every stream (and the KV bucket) of a job; returns the names that existed."""
    deleted = []
    for stream in names.streams():
        try:
            await js.delete_stream(stream)
            deleted.append(stream)
        except nats.js.errors.NotFoundError:
            pass
    return deleted


async def backlog(js, names: JobNames) -> dict[str, int]:
    """Messages not yet handed out from the job's prompts and trajectories streams.

    With a consumer, that is its num_pending (prompts being worked on are not waiting);
    before any consumer exists, every message in the stream waits.
    """
    out = {}
    for key, stream, durable in (("prompts", names.prompts_stream, names.prompts_consumer),
                                 ("trajectories", names.trajectories_stream, names.trajectories_consumer)):
        try:
            out[key] = (await js.consumer_info(stream, durable)).num_pending
        except nats.js.errors.NotFoundError:
            out[key] = (await js.stream_info(stream)).state.messages
    return out
