"""The per-job data plane on NATS JetStream: prompts, trajectories and job state.

Per RLJob (namespace/name) there are:

* a **prompts** stream, work-queue retention: the trainer's feeder publishes prompts, rollout
  agents share one durable pull consumer; the consumer's ``max_ack_pending`` bounds how many
  prompts are being worked on at once (server-side back-pressure), the stream's ``max_msgs``
  with ``discard: new`` bounds the backlog;
* a **trajectories** stream, work-queue retention: rollout agents publish, the trainer's
  durable pull consumer fetches and acks *after the optimizer step that used the samples is
  committed* — a crash before that redelivers instead of losing;
* a **KV bucket** holding one JSON document of job state (policy version, weight manifest
  location, curriculum stage, progress counters), updated by compare-and-set.

Delivery is at-least-once. Publishers set ``Nats-Msg-Id`` (the sample/prompt id) so retries
inside the stream's duplicate window are dropped by the server; the trainer consumer drops
anything it has already trained on by sample id (its seen-set is part of the trainer
checkpoint via ``state_dict``), which covers redeliveries outside that window.

Size limit: a trajectory is one message; we do not chunk. Chunking would make ack, dedupe and
redelivery per-sample atomicity much harder for no gain — the server's ``max_payload`` is
configurable up to 64 MiB (our chart and test fixtures set 8 MiB, ≈ 900k tokens). A message
above the limit raises :class:`PayloadTooLargeError` naming both sizes, before sending.

This module is imported by the operator: nats-py and numpy only, no torch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import nats
import nats.errors
import nats.js.errors
import numpy as np
from kuberl.workloads.logs import get_logger
from nats.aio.msg import Msg
from nats.js import api

log = get_logger(__name__)

# Errors after which a publish is safe to retry: the message id makes a retry idempotent.
_RETRYABLE = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
)


# What a JetStream pull `fetch` raises when its deadline passes with nothing (more) to
# deliver. nats' own TimeoutError is one; nats-py 2.16 also raises a bare
# asyncio.TimeoutError when the deadline runs out between its no-wait probe and its
# lingering request. On Python >= 3.11 asyncio.TimeoutError is the builtin TimeoutError,
# which nats.errors.TimeoutError subclasses, so this one class catches every variant.
_FETCH_TIMEOUT = (asyncio.TimeoutError, nats.errors.TimeoutError)


class BufferError(Exception):
    """Base class for buffer errors."""


class PayloadTooLargeError(BufferError):
    def __init__(self, what: str, size: int, limit: int):
        super().__init__(
            f"{what} encodes to {size} bytes, above the NATS max_payload of {limit} bytes; "
            f"raise max_payload in the nats-server config (up to 64 MiB) or shorten the episode"
        )
        self.size, self.limit = size, limit


class CodecError(BufferError):
    """A message that is not a valid kuberl trajectory/prompt."""


# --------------------------------------------------------------------------------------
# Names


_MAX_TOKEN = 200  # JetStream names may be 255 bytes; leave room for prefixes and suffixes.


def job_token(namespace: str, name: str) -> str:
    """A NATS-safe token for one job, unique per (namespace, name).

    Kubernetes namespaces are DNS labels (no '.', no '_'), object names DNS subdomains (may
    hold '.', never '_'). '_' separates the two and '.' (a subject separator in NATS) becomes
    '_' inside the name: the mapping stays injective. Overlong tokens are truncated and made
    unique again with a hash.
    """
    if not namespace or not name:
        raise ValueError("namespace and name must be non-empty")
    token = f"{namespace}_{name.replace('.', '_')}"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", token):
        raise ValueError(f"not a Kubernetes namespace/name: {namespace!r}/{name!r}")
    if len(token) > _MAX_TOKEN:
        digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:12]
        token = f"{token[: _MAX_TOKEN - 13]}-{digest}"
    return token


@dataclass(frozen=True)
class JobNames:
    """Every JetStream name a job uses, derived from its namespace and name."""

    prompts_stream: str
    trajectories_stream: str
    kv_bucket: str
    prompts_subject: str
    trajectories_subject: str
    prompts_consumer: str = "rollout"
    trajectories_consumer: str = "trainer"

    @classmethod
    def for_job(cls, namespace: str, name: str) -> JobNames:
        t = job_token(namespace, name)
        return cls(
            prompts_stream=f"kuberl_{t}_prompts",
            trajectories_stream=f"kuberl_{t}_trajectories",
            kv_bucket=f"kuberl_{t}_state",
            prompts_subject=f"kuberl.{t}.prompts",
            trajectories_subject=f"kuberl.{t}.trajectories",
        )

    def streams(self) -> list[str]:
        # The KV bucket is a stream too (KV_<bucket>); deleting it removes the bucket.
        return [self.prompts_stream, self.trajectories_stream, f"KV_{self.kv_bucket}"]


# --------------------------------------------------------------------------------------
# Records and codec


@dataclass
class Trajectory:
    """One sampled episode, as the trainer needs it.

    ``tokens`` are prompt + response ids; ``logprobs`` are the behaviour policy's logprobs of
    each token (0 where not generated); ``loss_mask`` marks tokens that are trained on
    (generated tokens, not tool outputs or the prompt). ``timing`` carries seconds spent per
    phase (generate, env, …) and ``created_at`` the wall-clock time it was finished.
    """

    sample_id: str
    prompt_id: str
    group_id: str
    policy_version: int
    tokens: np.ndarray
    logprobs: np.ndarray
    loss_mask: np.ndarray
    reward: float
    timing: dict[str, float] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokens = np.asarray(self.tokens, dtype="<i4")
        self.logprobs = np.asarray(self.logprobs, dtype="<f4")
        self.loss_mask = np.asarray(self.loss_mask, dtype=np.uint8)
        n = self.tokens.shape
        if self.tokens.ndim != 1 or self.logprobs.shape != n or self.loss_mask.shape != n:
            raise ValueError(
                f"trajectory {self.sample_id}: tokens, logprobs and loss_mask must be 1-D of one length, "
                f"got {self.tokens.shape}, {self.logprobs.shape}, {self.loss_mask.shape}"
            )

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


_TRAJ_MAGIC = b"KRT1"
_HEADER = struct.Struct("<4sI")  # magic, JSON header length


def encode_trajectory(t: Trajectory) -> bytes:
    """``KRT1 | u32 len | JSON header (ids, scalars) | pad to 4 | int32 tokens | float32 logprobs | u8 mask``.

    Arrays travel as raw little-endian bytes (9 bytes/token); only the few scalars are JSON.
    """
    header = json.dumps(
        {
            "sample_id": t.sample_id, "prompt_id": t.prompt_id, "group_id": t.group_id,
            "policy_version": int(t.policy_version), "reward": float(t.reward), "n": len(t),
            "timing": t.timing, "created_at": t.created_at, "meta": t.meta,
        },
        separators=(",", ":"),
    ).encode()
    header += b" " * (-(len(header) + _HEADER.size) % 4)  # keeps the int32/float32 arrays aligned
    return b"".join(
        (_HEADER.pack(_TRAJ_MAGIC, len(header)), header, t.tokens.tobytes(), t.logprobs.tobytes(), t.loss_mask.tobytes())
    )


def decode_trajectory(data: bytes) -> Trajectory:
    if len(data) < _HEADER.size:
        raise CodecError("message shorter than the trajectory header")
    magic, hlen = _HEADER.unpack_from(data)
    if magic != _TRAJ_MAGIC:
        raise CodecError(f"bad magic {magic!r}, expected {_TRAJ_MAGIC!r}")
    start = _HEADER.size
    try:
        h = json.loads(data[start : start + hlen])
    except ValueError as e:
        raise CodecError(f"bad trajectory header: {e}") from e
    n, off = int(h["n"]), start + hlen
    if len(data) != off + 9 * n:
        raise CodecError(f"trajectory {h.get('sample_id')}: {len(data)} bytes, expected {off + 9 * n} for {n} tokens")
    buf = memoryview(data)
    # frombuffer views the message bytes without copying; the arrays are read-only.
    tokens = np.frombuffer(buf, dtype="<i4", count=n, offset=off)
    logprobs = np.frombuffer(buf, dtype="<f4", count=n, offset=off + 4 * n)
    mask = np.frombuffer(buf, dtype=np.uint8, count=n, offset=off + 8 * n)
    return Trajectory(
        sample_id=h["sample_id"], prompt_id=h["prompt_id"], group_id=h["group_id"],
        policy_version=h["policy_version"], tokens=tokens, logprobs=logprobs, loss_mask=mask,
        reward=h["reward"], timing=h["timing"], created_at=h["created_at"], meta=h["meta"],
    )


@dataclass
class Prompt:
    """A unit of rollout work: one prompt, sampled ``n_samples`` times (one GRPO group).

    ``attempt`` increases when the feeder re-issues a prompt whose trajectories never came.
    Prompts are small (text or a few hundred ids), so they travel as JSON.
    """

    prompt_id: str
    data: dict[str, Any]
    n_samples: int = 1
    stage: int = 0
    attempt: int = 0

    @property
    def msg_id(self) -> str:
        return f"{self.prompt_id}#{self.attempt}"

    @property
    def group_id(self) -> str:
        return self.msg_id


def encode_prompt(p: Prompt) -> bytes:
    return json.dumps(asdict(p), separators=(",", ":")).encode()


def decode_prompt(data: bytes) -> Prompt:
    try:
        return Prompt(**json.loads(data))
    except (ValueError, TypeError) as e:
        raise CodecError(f"bad prompt message: {e}") from e


# --------------------------------------------------------------------------------------
# Pure policies


StalenessPolicy = Literal["drop", "downweight"]


def staleness_weight(
    sample_version: int,
    current_version: int,
    max_off_policy_steps: int,
    policy: StalenessPolicy = "drop",
    decay: float = 0.5,
) -> float | None:
    """Loss weight of a sample generated by ``sample_version`` when training ``current_version``.

    Within ``max_off_policy_steps`` the weight is 1 (the importance correction handles it).
    Beyond: ``drop`` → None; ``downweight`` → ``decay ** (lag - max_off_policy_steps)``.
    """
    lag = current_version - sample_version
    if lag <= max_off_policy_steps:
        return 1.0
    if policy == "drop":
        return None
    return float(decay ** (lag - max_off_policy_steps))


@dataclass
class InFlight:
    """Prompts issued by the feeder and not yet answered, with their issue time.

    The broker acks before it fsyncs, so the feeder — not JetStream — guarantees that
    every prompt eventually yields trajectories: it re-issues those overdue.
    """

    limit: int
    issued: dict[str, tuple[Prompt, float]] = field(default_factory=dict)

    def capacity(self) -> int:
        return max(0, self.limit - len(self.issued))

    def issue(self, p: Prompt, now: float) -> None:
        self.issued[p.prompt_id] = (p, now)

    def complete(self, prompt_id: str) -> bool:
        return self.issued.pop(prompt_id, None) is not None

    def overdue(self, now: float, timeout: float) -> list[Prompt]:
        return [p for p, t in self.issued.values() if now - t > timeout]


# --------------------------------------------------------------------------------------
# Configuration


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


# --------------------------------------------------------------------------------------
# Connection and admin


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


# --------------------------------------------------------------------------------------
# Job state (KV)


@dataclass
class JobState:
    policy_version: int = 0
    weights_manifest: str | None = None  # s3://bucket/prefix/v.../manifest.json of policy_version
    curriculum_stage: int = 0
    counters: dict[str, int] = field(default_factory=dict)  # steps, samples, prompts, …


async def _stop_quietly(watcher) -> None:
    try:
        await watcher.stop()
    except Exception:  # noqa: BLE001, S110 (the connection may be gone already)
        pass


class JobStateStore:
    """One JSON document under key ``state``; writers compare-and-set on its revision."""

    KEY = "state"

    def __init__(self, kv):
        self._kv = kv

    async def get(self) -> tuple[JobState, int]:
        """The state and its revision (0 when never written)."""
        try:
            entry = await self._kv.get(self.KEY)
        except nats.js.errors.KeyNotFoundError:
            return JobState(), 0
        return JobState(**json.loads(entry.value)), entry.revision

    async def follow(self, fallback_s: float = 1.0) -> AsyncIterator[JobState]:
        """The state each time it is written (a KV watch: a new policy version reaches rollout
        agents as soon as it is announced, not at their next poll), and the state as read
        whenever ``fallback_s`` passes without one — so a watch lost to a reconnect costs at
        most that much latency. Close it (``contextlib.aclosing``) to stop the watch.
        """
        watcher = None
        try:
            while True:
                if watcher is None:
                    try:
                        watcher = await self._kv.watch(self.KEY)
                    except Exception as e:  # noqa: BLE001 (NATS away: read as before, retry the watch)
                        log.warning("job state watch failed; reading instead", error=str(e))
                        await asyncio.sleep(fallback_s)
                entry = None
                if watcher is not None:
                    try:
                        entry = await watcher.updates(timeout=fallback_s)
                    except nats.errors.TimeoutError:
                        pass
                    except Exception as e:  # noqa: BLE001 (a broken watch is re-created)
                        log.warning("job state watch broke; re-creating it", error=str(e))
                        await _stop_quietly(watcher)
                        watcher = None
                if entry is not None and entry.value and entry.operation is None:
                    yield JobState(**json.loads(entry.value))
                else:  # the watch's "caught up" marker, a quiet spell, or no watch
                    yield (await self.get())[0]
        finally:
            if watcher is not None:
                await _stop_quietly(watcher)

    async def update(self, mutate: Callable[[JobState], JobState], attempts: int = 32) -> JobState:
        """Apply ``mutate`` atomically: re-read and retry when another writer got there first."""
        for _ in range(attempts):
            state, rev = await self.get()
            new = mutate(replace(state, counters=dict(state.counters)))
            value = json.dumps(asdict(new)).encode()
            try:
                if rev == 0:
                    await self._kv.create(self.KEY, value)
                else:
                    await self._kv.update(self.KEY, value, last=rev)
                return new
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
                await asyncio.sleep(0.01)
        raise BufferError(f"job state update lost the race {attempts} times")

    async def publish_version(self, version: int, manifest_uri: str) -> JobState:
        """Announce a new policy version; never moves the version backwards."""

        def bump(s: JobState) -> JobState:
            if version <= s.policy_version and s.weights_manifest is not None:
                return s
            return replace(s, policy_version=version, weights_manifest=manifest_uri)

        return await self.update(bump)

    async def add_counters(self, **deltas: int) -> JobState:
        def add(s: JobState) -> JobState:
            for k, v in deltas.items():
                s.counters[k] = s.counters.get(k, 0) + v
            return s

        return await self.update(add)


# --------------------------------------------------------------------------------------
# The buffer


@dataclass
class BufferStats:
    received: int = 0
    duplicates: int = 0
    stale_dropped: int = 0
    stale_downweighted: int = 0
    bad_messages: int = 0
    acked: int = 0


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

    @classmethod
    async def open(cls, servers: str | Sequence[str], namespace: str, name: str,
                   cfg: BufferConfig = BufferConfig(), *, create: bool = True, **connect_kwargs) -> JobBuffer:
        names = JobNames.for_job(namespace, name)
        nc = await connect(servers, **connect_kwargs)
        js = nc.jetstream()
        if create:
            await ensure_job(js, names, cfg)
        kv = await js.key_value(names.kv_bucket)
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
        return await self._publish(self.names.trajectories_subject, payload, t.sample_id, self.names.trajectories_stream)

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
        return TrajectoryConsumer(self, sub, **kw)

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

    async def backlog(self) -> dict[str, int]:
        """Messages waiting in each stream (for the autoscaler and status)."""
        out = {}
        for key, stream in (("prompts", self.names.prompts_stream), ("trajectories", self.names.trajectories_stream)):
            out[key] = (await self.js.stream_info(stream)).state.messages
        return out


class Batch:
    """Trajectories fetched together, acked together after the step that used them commits."""

    def __init__(self, consumer: TrajectoryConsumer, trajectories: list[Trajectory], weights: list[float],
                 msgs: list[Msg]):
        self.trajectories, self.weights = trajectories, weights
        self._consumer, self._msgs = consumer, msgs
        self.done = False

    def __len__(self) -> int:
        return len(self.trajectories)

    def __iter__(self):
        return iter(self.trajectories)

    @property
    def sample_ids(self) -> list[str]:
        return [t.sample_id for t in self.trajectories]

    async def ack(self) -> None:
        """Call after the optimizer step (and its checkpoint, if any) is committed.

        Acks travel fire-and-forget and a flush (PING/PONG) confirms the server has read
        them; an ack lost anyway only causes a redelivery that the seen-set drops.
        """
        if self.done:
            return
        for m in self._msgs:
            await m.ack()
        await self._consumer._buffer.nc.flush()
        self._consumer._commit(self.sample_ids)
        self._consumer.stats.acked += len(self._msgs)
        self.done = True

    async def nak(self, delay: float | None = None) -> None:
        """Give the samples back (the step failed); they are redelivered."""
        if self.done:
            return
        for m in self._msgs:
            await m.nak(delay)
        self._consumer._forget(self.sample_ids)
        self.done = True

    async def keepalive(self) -> None:
        """Reset the ack timer of every message (a long step must not trigger redelivery)."""
        for m in self._msgs:
            await m.in_progress()


class TrajectoryConsumer:
    """The trainer's side: fetch, de-duplicate, apply the staleness policy, ack later."""

    def __init__(self, buffer: JobBuffer, sub, *, max_off_policy_steps: int = 1,
                 staleness: StalenessPolicy = "drop", downweight_decay: float = 0.5,
                 seen_capacity: int = 1_000_000):
        self._buffer, self._sub = buffer, sub
        self.max_off_policy_steps, self.staleness, self.decay = max_off_policy_steps, staleness, downweight_decay
        self._committed: OrderedDict[str, None] = OrderedDict()  # trained on; bounded, oldest evicted
        self._pending: dict[str, int] = {}  # sample id → stream seq, fetched into a batch not yet acked
        self._seen_capacity = seen_capacity
        self.stats = BufferStats()

    def _commit(self, ids: Iterable[str]) -> None:
        for sid in ids:
            self._pending.pop(sid, None)
            self._committed[sid] = None
        while len(self._committed) > self._seen_capacity:
            self._committed.popitem(last=False)

    def _forget(self, ids: Iterable[str]) -> None:
        for sid in ids:
            self._pending.pop(sid, None)

    def state_dict(self) -> dict[str, Any]:
        """Save with the trainer checkpoint: after a restore, samples trained before the
        crash but not yet acked are recognised when redelivered."""
        return {"committed": list(self._committed), "stats": asdict(self.stats)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._committed = OrderedDict.fromkeys(state.get("committed", []))
        self.stats = BufferStats(**state.get("stats", {}))

    async def fetch(self, n: int, *, current_version: int, timeout: float = 5.0) -> Batch:
        """Up to ``n`` fresh, unseen trajectories, waiting at most ``timeout`` seconds.

        Duplicates of trained samples and stale samples under ``drop`` are acked with the
        batch (they are done with); a redelivered copy of a sample still pending in an
        unacked batch is left alone — that batch's ack settles it.
        """
        kept: list[Trajectory] = []
        weights: list[float] = []
        msgs: list[Msg] = []
        deadline = time.monotonic() + timeout
        try:
            while len(kept) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0.01:
                    break
                try:
                    got = await self._sub.fetch(n - len(kept), timeout=remaining)
                except _FETCH_TIMEOUT:
                    break  # nothing more within the deadline: the batch is what arrived so far
                for m in got:
                    await self._take(m, current_version, kept, weights, msgs)
        except BaseException as e:
            # The caller never sees this batch, so nothing in it may stay pending: a pending
            # id makes its redelivery look like a copy that "its own batch" will settle, and
            # the sample would never be trained. Give the messages back for redelivery.
            self._forget(t.sample_id for t in kept)
            if isinstance(e, Exception) and msgs:
                await self._nak_quietly(msgs)
            raise
        return Batch(self, kept, weights, msgs)

    async def _nak_quietly(self, msgs: list[Msg]) -> None:
        # Best effort: when the connection is gone, the ack wait redelivers them anyway.
        try:
            for m in msgs:
                await m.nak()
        except Exception as e:  # noqa: BLE001 - already failing; the original error is raised
            log.warning("could not give back fetched trajectories", count=len(msgs), error=type(e).__name__)

    async def _take(self, m: Msg, current_version: int, kept: list[Trajectory], weights: list[float],
              msgs: list[Msg]) -> None:
        """Sort one fetched message into ``kept`` (trainable) and ``msgs`` (settled at the batch's ack)."""
        self.stats.received += 1
        try:
            t = decode_trajectory(m.data)
        except CodecError as e:
            self.stats.bad_messages += 1
            log.error("dropping undecodable trajectory", error=str(e))
            await m.term()  # never redeliver poison
            return
        if t.sample_id in self._committed:
            self.stats.duplicates += 1
            msgs.append(m)
            return
        seq = m.metadata.sequence.stream
        if t.sample_id in self._pending:
            self.stats.duplicates += 1
            if self._pending[t.sample_id] != seq:
                msgs.append(m)  # a second copy in the stream: done with it at this ack
            return  # else: a redelivery of a pending message; its own batch acks it
        w = staleness_weight(t.policy_version, current_version, self.max_off_policy_steps, self.staleness, self.decay)
        msgs.append(m)
        if w is None:
            self.stats.stale_dropped += 1
            return
        if w < 1.0:
            self.stats.stale_downweighted += 1
        self._pending[t.sample_id] = seq
        kept.append(t)
        weights.append(w)


@dataclass
class PromptLease:
    """A prompt handed to one rollout agent; ack once its trajectories are published."""

    prompt: Prompt
    msg: Msg

    async def ack(self) -> None:
        await self.msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        await self.msg.nak(delay)

    async def keepalive(self) -> None:
        await self.msg.in_progress()

    @property
    def deliveries(self) -> int:
        """How many times the server has handed this prompt out (1 on the first lease)."""
        return int(self.msg.metadata.num_delivered)


class PromptConsumer:
    def __init__(self, sub):
        self._sub = sub

    async def fetch(self, n: int = 1, timeout: float = 5.0) -> list[PromptLease]:
        """Up to ``n`` prompts; fewer (or none) when the in-flight bound is reached."""
        try:
            msgs = await self._sub.fetch(n, timeout=timeout)
        except _FETCH_TIMEOUT:
            return []
        leases = []
        for m in msgs:
            try:
                leases.append(PromptLease(decode_prompt(m.data), m))
            except CodecError as e:
                log.error("dropping undecodable prompt", error=str(e))
                await m.term()
        return leases


class PromptFeeder:
    """Trainer-side prompt issuing with a bound on prompts in flight and re-issue of overdue ones."""

    def __init__(self, buffer: JobBuffer, max_in_flight: int, reissue_after_s: float = 1800.0):
        self._buffer = buffer
        self.in_flight = InFlight(limit=max_in_flight)
        self.reissue_after_s = reissue_after_s

    def capacity(self) -> int:
        return self.in_flight.capacity()

    async def feed(self, candidates: Iterable[Prompt]) -> list[Prompt]:
        """Publish as many of ``candidates`` as capacity allows; returns those issued."""
        batch = []
        it = iter(candidates)
        while len(batch) < self.capacity():
            p = next(it, None)
            if p is None:
                break
            batch.append(p)
        if batch:
            await self._buffer.publish_prompts(batch)
            now = time.monotonic()
            for p in batch:
                self.in_flight.issue(p, now)
        return batch

    def complete(self, prompt_id: str) -> bool:
        """Mark a prompt answered (its group arrived); frees a slot."""
        return self.in_flight.complete(prompt_id)

    async def reissue_overdue(self) -> list[Prompt]:
        """Publish again, under a new attempt number, prompts whose trajectories never came."""
        now = time.monotonic()
        again = [replace(p, attempt=p.attempt + 1) for p in self.in_flight.overdue(now, self.reissue_after_s)]
        if again:
            await self._buffer.publish_prompts(again)
            for p in again:
                self.in_flight.issue(p, now)
            log.warning("re-issued overdue prompts", count=len(again))
        return again
