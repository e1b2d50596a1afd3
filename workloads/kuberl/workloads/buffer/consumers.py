"""The consumers of a job's streams: the trainer's trajectory consumer (fetch, de-duplicate,
apply the staleness policy, ack after the step) and the agents' prompt leases.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from kuberl.workloads.buffer.broker_away import BROKER_AWAY
from kuberl.workloads.buffer.records import (
    CodecError,
    Prompt,
    Trajectory,
    decode_prompt,
    decode_trajectory,
)
from kuberl.workloads.buffer.staleness import StalenessPolicy, staleness_weight
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)

# What a JetStream pull `fetch` raises when its deadline passes with nothing (more) to
# deliver. nats' own TimeoutError is one; nats-py 2.16 also raises a bare
# asyncio.TimeoutError when the deadline runs out between its no-wait probe and its
# lingering request. On Python >= 3.11 asyncio.TimeoutError is the builtin TimeoutError,
# which nats.errors.TimeoutError subclasses, so this one class catches every variant.
_FETCH_TIMEOUT = (asyncio.TimeoutError, nats.errors.TimeoutError)


@dataclass
class BufferStats:
    received: int = 0
    duplicates: int = 0
    stale_dropped: int = 0
    stale_downweighted: int = 0
    bad_messages: int = 0
    acked: int = 0


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
        try:
            for m in self._msgs:
                await m.ack()
            await self._consumer._nc.flush()
        except BROKER_AWAY as e:
            # The step is committed; its acks may be lost with the connection, and then the
            # redelivered samples are dropped as trained (the seen-set below).
            log.warning("acks not confirmed; the broker is away", samples=len(self._msgs), error=type(e).__name__)
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


async def _wait_out(deadline: float, error: BaseException) -> None:
    """A fetch the broker could not serve: wait until its deadline, as a fetch that found
    nothing does, so a caller's loop neither crashes nor spins while the broker is away."""
    log.warning("fetch found the broker away; waiting", error=type(error).__name__)
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


class TrajectoryConsumer:
    """The trainer's side: fetch, de-duplicate, apply the staleness policy, ack later."""

    def __init__(self, nc: nats.NATS, sub, *, max_off_policy_steps: int = 1,
                 staleness: StalenessPolicy = "drop", downweight_decay: float = 0.5,
                 seen_capacity: int = 1_000_000):
        self._nc, self._sub = nc, sub  # the connection: a batch's ack is flushed on it
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
                except BROKER_AWAY as e:
                    await _wait_out(deadline, e)
                    break
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
        deadline = time.monotonic() + timeout
        try:
            msgs = await self._sub.fetch(n, timeout=timeout)
        except _FETCH_TIMEOUT:
            return []
        except BROKER_AWAY as e:
            await _wait_out(deadline, e)
            return []
        leases = []
        for m in msgs:
            try:
                leases.append(PromptLease(decode_prompt(m.data), m))
            except CodecError as e:
                log.error("dropping undecodable prompt", error=str(e))
                await m.term()
        return leases
