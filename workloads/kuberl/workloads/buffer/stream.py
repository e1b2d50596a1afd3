"""One job's buffer over one NATS connection: publishing, and the trainer's and agents' consumers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from kuberl.workloads.buffer.admin import BufferConfig, backlog, connect, ensure_job
from kuberl.workloads.buffer.broker_away import BROKER_AWAY
from kuberl.workloads.buffer.consumers import PromptConsumer, TrajectoryConsumer
from kuberl.workloads.buffer.fetch_claims import FetchClaims
from kuberl.workloads.buffer.kv import JobStateStore
from kuberl.workloads.buffer.names import JobNames
from kuberl.workloads.buffer.records import (
    PayloadTooLargeError,
    Prompt,
    Trajectory,
    encode_prompt,
    encode_trajectory,
)
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)

# Errors after which a publish is safe to retry (the message id makes a retry idempotent):
# the broker away, or the connection closed, within the publish's retry deadline.
_RETRYABLE = (*BROKER_AWAY, nats.errors.ConnectionClosedError)


class JobBuffer:
    """One job's streams, KV and consumers over one NATS connection.

    >>> buf = await JobBuffer.open("nats://nats:4222", "team-a", "math-grpo")
    >>> await buf.publish_trajectories(trajs)            # rollout agent
    >>> consumer = await buf.trajectory_consumer()         # trainer
    >>> batch = await consumer.fetch(256, current_version=step)
    >>> ...optimizer step, checkpoint...
    >>> await batch.ack()
    """

    def __init__(self, nc, names: JobNames, cfg: BufferConfig, kv):
        self.nc, self.js, self.names, self.cfg = nc, nc.jetstream(), names, cfg
        self.state = JobStateStore(kv)
        self.fetch_claims = FetchClaims(kv)  # which agent of a node downloads a weight version (rollout.node_share)

    @classmethod
    async def open(cls, servers: str | Sequence[str], namespace: str, name: str,
                   cfg: BufferConfig = BufferConfig(), *, create: bool = False, wait_for_streams_s: float = 300.0,
                   **connect_kwargs) -> JobBuffer:
        """Connect to the job's buffer. Workload processes never create or change the
        streams (``create=False``): the operator made them from spec.buffer, and a process
        that starts first waits for them instead of creating them with other settings."""
        names = JobNames.for_job(namespace, name)
        nc = await connect(servers, **connect_kwargs)
        js = nc.jetstream()
        if create:
            await ensure_job(js, names, cfg)
        deadline = time.monotonic() + wait_for_streams_s
        while True:
            try:
                kv = await js.key_value(names.kv_bucket)
                await js.stream_info(names.trajectories_stream)
                await js.stream_info(names.prompts_stream)
                break
            except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
                if time.monotonic() > deadline:
                    await nc.close()
                    raise BufferError(
                        f"the streams of job {namespace}/{name} do not exist at {servers} after "
                        f"{wait_for_streams_s:.0f}s; the operator (or `kuberl run`) creates them"
                    ) from None
                log.info("waiting for the job's streams", job=f"{namespace}/{name}")
                await asyncio.sleep(1.0)
        return cls(nc, names, cfg, kv)

    async def close(self) -> None:
        # flush + close rather than drain: draining pull subscriptions can stall for the
        # whole drain timeout, and every ack/publish we care about was awaited already.
        if self.nc.is_connected:
            try:
                await self.nc.flush(timeout=5)
            except (TimeoutError, nats.errors.Error) as e:
                log.warning("flush before close failed", error=type(e).__name__)
        await self.nc.close()

    # ---- publishing -------------------------------------------------------------------

    def _check_size(self, what: str, payload: bytes) -> None:
        # Headers and protocol framing take a few hundred bytes of the limit too.
        limit = self.nc.max_payload - 512
        if len(payload) > limit:
            raise PayloadTooLargeError(what, len(payload), limit)

    async def _publish(self, subject: str, payload: bytes, msg_id: str, stream: str) -> api.PubAck:
        """Publish and wait for the stream's ack, retrying through outages; idempotent by msg id."""
        deadline = time.monotonic() + self.cfg.publish_retry_for_s
        delay = 0.05
        while True:
            try:
                return await self.js.publish(subject, payload, timeout=self.cfg.publish_timeout_s,
                                             stream=stream, headers={"Nats-Msg-Id": msg_id})
            except _RETRYABLE as e:
                if time.monotonic() > deadline:
                    raise
                log.warning("publish retry", msg_id=msg_id, error=type(e).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _publish_many(self, subject: str, stream: str, items: list[tuple[str, bytes]]) -> list[api.PubAck]:
        """Pipelined publish: send all, then await the acks; any failed one is retried alone."""
        futures = []
        for msg_id, payload in items:
            try:
                # No wait_stall: on Python 3.11 it costs a task and a timer per message. The
                # in-flight semaphore cannot wedge: unanswered futures are cancelled below,
                # which releases their slots.
                fut = await self.js.publish_async(subject, payload, stream=stream, headers={"Nats-Msg-Id": msg_id})
            except (*_RETRYABLE, nats.js.errors.TooManyStalledMsgsError):
                fut = None
            futures.append(fut)
        pending = [f for f in futures if f is not None]
        if pending:
            # One wait for the whole pipeline (not a timer per message); stragglers are retried.
            await asyncio.wait(pending, timeout=self.cfg.publish_timeout_s)
        acks: list[api.PubAck] = []
        for (msg_id, payload), fut in zip(items, futures, strict=True):
            ack = None
            if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
                ack = fut.result()
            elif fut is not None and not fut.done():
                fut.cancel()
            acks.append(ack if ack is not None else await self._publish(subject, payload, msg_id, stream))
        return acks

    async def publish_trajectory(self, t: Trajectory) -> api.PubAck:
        payload = encode_trajectory(t)
        self._check_size(f"trajectory {t.sample_id} ({len(t)} tokens)", payload)
        return await self._publish(self.names.trajectories_subject, payload, t.sample_id,
                                   self.names.trajectories_stream)

    async def publish_trajectories(self, trajs: Iterable[Trajectory]) -> list[api.PubAck]:
        items = []
        for t in trajs:
            payload = encode_trajectory(t)
            self._check_size(f"trajectory {t.sample_id} ({len(t)} tokens)", payload)
            items.append((t.sample_id, payload))
        return await self._publish_many(self.names.trajectories_subject, self.names.trajectories_stream, items)

    async def publish_prompts(self, prompts: Iterable[Prompt]) -> list[api.PubAck]:
        items = []
        for p in prompts:
            payload = encode_prompt(p)
            self._check_size(f"prompt {p.prompt_id}", payload)
            items.append((p.msg_id, payload))
        return await self._publish_many(self.names.prompts_subject, self.names.prompts_stream, items)

    # ---- consumers --------------------------------------------------------------------

    async def trajectory_consumer(self, **kw) -> TrajectoryConsumer:
        cc = api.ConsumerConfig(
            durable_name=self.names.trajectories_consumer,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.cfg.trajectory_ack_wait_s,
            max_ack_pending=self.cfg.trajectory_max_ack_pending,
            deliver_policy=api.DeliverPolicy.ALL,
        )
        sub = await self.js.pull_subscribe(self.names.trajectories_subject, durable=self.names.trajectories_consumer,
                                           stream=self.names.trajectories_stream, config=cc)
        return TrajectoryConsumer(self.nc, sub, **kw)

    async def prompt_consumer(self) -> PromptConsumer:
        cc = api.ConsumerConfig(
            durable_name=self.names.prompts_consumer,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.cfg.prompt_ack_wait_s,
            max_ack_pending=self.cfg.max_in_flight_prompts,  # the server-side back-pressure
        )
        sub = await self.js.pull_subscribe(self.names.prompts_subject, durable=self.names.prompts_consumer,
                                           stream=self.names.prompts_stream, config=cc)
        return PromptConsumer(sub)

    async def prompts_last_seq(self) -> int | None:
        """The prompts stream's last sequence number (None when the broker cannot say now)."""
        try:
            info = await self.js.stream_info(self.names.prompts_stream)
        except (*_RETRYABLE, nats.js.errors.NotFoundError) as e:
            log.warning("prompts stream not readable", error=type(e).__name__)
            return None
        return info.state.last_seq

    async def backlog(self) -> dict[str, int]:
        """Messages not yet handed out, per stream (what the autoscaler reads; `admin.backlog`)."""
        return await backlog(self.js, self.names)
