"""Trainer-side prompt issuing: a bound on prompts in flight, and re-issue of overdue ones."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from kuberl.workloads.buffer.records import Prompt
from kuberl.workloads.buffer.stream import JobBuffer
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)


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


class PromptFeeder:
    """Trainer-side prompt issuing: publishes prompts, remembers them until their group is
    trained or dropped, and re-issues (as a new attempt) those whose trajectories never came.

    It also notices when the broker went back in time (a nats-server that lost acknowledged
    writes, e.g. an OS crash before its fsync): the prompts stream then hands out sequence
    numbers it had acknowledged before, or ends below them. Every prompt in flight is then
    re-issued at once, rather than after ``reissue_after_s``.
    """

    def __init__(self, buffer: JobBuffer, max_in_flight: int, reissue_after_s: float = 1800.0,
                 broker_check_s: float = 2.0):
        self._buffer = buffer
        self.in_flight = InFlight(limit=max_in_flight)
        # Answered, waiting in the assembler to be trained: in the checkpoint's in-flight set,
        # so a crash before their step re-issues them (their trajectories were acked).
        self.awaiting_training: dict[str, Prompt] = {}
        self.reissue_after_s = reissue_after_s
        self.broker_check_s = broker_check_s
        self._acked_seq = 0  # the highest prompts-stream sequence the broker acknowledged to us
        self._checked_at = time.monotonic()
        self._rolled_back = False
        self.rollbacks = 0

    def __len__(self) -> int:
        """Prompts issued and not yet answered."""
        return len(self.in_flight.issued)

    def __contains__(self, prompt_id: str) -> bool:
        """Whether trajectories of ``prompt_id`` are still wanted (issued here, not yet answered)."""
        return prompt_id in self.in_flight.issued

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
            now = time.monotonic()
            for p in batch:
                self.in_flight.issue(p, now)
            await self._publish(batch)
        return batch

    async def _publish(self, prompts: list[Prompt]) -> None:
        acks = await self._buffer.publish_prompts(prompts)
        # A duplicate's ack carries the original's sequence; only new messages say where the stream is.
        seqs = [a.seq for a in acks if a is not None and not getattr(a, "duplicate", False)]
        if seqs and min(seqs) <= self._acked_seq:
            log.warning("prompts stream acknowledged a sequence number again: the broker lost acknowledged messages",
                        seq=min(seqs), acked_up_to=self._acked_seq)
            self._rolled_back = True
            self._acked_seq = max(seqs)
        else:
            self._acked_seq = max([self._acked_seq, *seqs])

    async def check_broker(self) -> list[Prompt]:
        """Re-issue every prompt in flight if the broker lost acknowledged prompts; returns those re-issued.

        Seen on a publish (a sequence number acknowledged twice) and, every ``broker_check_s``,
        by the stream's last sequence (the feeder may have nothing to publish for a while).
        """
        now = time.monotonic()
        if not self._rolled_back and self._acked_seq and now - self._checked_at >= self.broker_check_s:
            self._checked_at = now
            last = await self._buffer.prompts_last_seq()
            if last is not None and last < self._acked_seq:
                log.warning("prompts stream ends below what it acknowledged: the broker lost acknowledged messages",
                            stream_last_seq=last, acked_up_to=self._acked_seq)
                self._rolled_back = True
                self._acked_seq = last
        if not self._rolled_back:
            return []
        self._rolled_back = False
        self.rollbacks += 1
        again = await self.reissue([p for p, _ in self.in_flight.issued.values()])
        log.warning("re-issued every prompt in flight after the broker went back in time", count=len(again))
        return again

    def complete(self, prompt_id: str, trainable: bool = True) -> bool:
        """Mark a prompt answered (its group arrived, or can never be trained); frees a slot.

        A trainable group's prompt stays in the checkpointed set until `settle` (its step).
        """
        entry = self.in_flight.issued.get(prompt_id)
        if entry is not None and trainable:
            self.awaiting_training[prompt_id] = entry[0]
        return self.in_flight.complete(prompt_id)

    def settle(self, prompt_ids: Iterable[str]) -> None:
        """Their groups were trained (or dropped after all): nothing to re-issue after a crash."""
        for pid in prompt_ids:
            self.awaiting_training.pop(pid, None)

    def restore(self, prompts: Iterable[Prompt]) -> None:
        """Prompts a previous trainer had in flight, re-issued at the next `reissue_overdue`.

        Their answers may sit, unacked, with the dead trainer's consumer until the ack wait
        runs out, and waiting for them would stall the job. Whichever attempt completes
        first is trained; the other is ignored.
        """
        long_ago = time.monotonic() - self.reissue_after_s - 1
        for p in prompts:
            self.in_flight.issue(p, long_ago)

    def snapshot(self) -> list[Prompt]:
        """What `restore` needs after a crash (saved with the checkpoint): prompts in flight
        and those answered but not yet trained."""
        return [p for p, _ in self.in_flight.issued.values()] + list(self.awaiting_training.values())

    async def reissue_overdue(self) -> list[Prompt]:
        """Publish again, under a new attempt number, prompts whose trajectories never came."""
        overdue = self.in_flight.overdue(time.monotonic(), self.reissue_after_s)
        again = await self.reissue(overdue)
        if again:
            log.warning("re-issued overdue prompts", count=len(again))
        return again

    async def reissue(self, prompts: list[Prompt]) -> list[Prompt]:
        now = time.monotonic()
        again = [replace(p, attempt=p.attempt + 1) for p in prompts]
        for p in again:
            self.in_flight.issue(p, now)
        if again:
            await self._publish(again)
        return again
