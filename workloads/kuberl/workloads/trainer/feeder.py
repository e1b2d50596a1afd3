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
    answered, and re-issues (as a new attempt) those whose trajectories never came."""

    def __init__(self, buffer: JobBuffer, max_in_flight: int, reissue_after_s: float = 1800.0):
        self._buffer = buffer
        self.in_flight = InFlight(limit=max_in_flight)
        self.reissue_after_s = reissue_after_s

    def __len__(self) -> int:
        """Prompts issued and not yet answered."""
        return len(self.in_flight.issued)

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
            await self._buffer.publish_prompts(batch)
        return batch

    def complete(self, prompt_id: str) -> bool:
        """Mark a prompt answered (its group arrived, or can never be trained); frees a slot."""
        return self.in_flight.complete(prompt_id)

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
        """What `restore` needs after a crash (saved with the checkpoint)."""
        return [p for p, _ in self.in_flight.issued.values()]

    async def reissue_overdue(self) -> list[Prompt]:
        """Publish again, under a new attempt number, prompts whose trajectories never came."""
        now = time.monotonic()
        again = [replace(p, attempt=p.attempt + 1) for p in self.in_flight.overdue(now, self.reissue_after_s)]
        if again:
            for p in again:
                self.in_flight.issue(p, now)
            await self._buffer.publish_prompts(again)
            log.warning("re-issued overdue prompts", count=len(again))
        return again
