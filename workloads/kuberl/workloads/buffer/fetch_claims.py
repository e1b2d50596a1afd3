"""Who on a node downloads a weight version: one claim per (node, version) in the job's KV.

The first rollout agent on a node to ask for a version creates its claim (an atomic KV
create) and downloads it from the store; the others on that node wait for the claim to
say ``ready`` and copy the files from that agent (`weights.relay`). The claimant refreshes
``at`` while it downloads, so a claimant killed mid-download is noticed by its silence;
a claim that ends ``failed``, or falls silent, sends the waiting agents to the store.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import asdict, dataclass, replace

import nats.js.errors

from kuberl.workloads.logs import get_logger

log = get_logger(__name__)

FETCHING, READY, FAILED = "fetching", "ready", "failed"
HEARTBEAT_S = 2.0
SILENT_AFTER_S = 15.0  # a claim not refreshed this long belongs to a dead claimant


def claim_key(node: str, version: int) -> str:
    # KV keys take [-_=/.A-Za-z0-9]; a dot would split the node's name into key tokens.
    return f"fetch.{re.sub(r'[^A-Za-z0-9_-]', '_', node)}.v{version:08d}"


@dataclass(frozen=True)
class Claim:
    agent: str
    url: str  # where the claimant serves the version's files (`weights.relay`)
    token: str  # what the claimant's relay asks of a reader: only those who read the job's KV get it
    state: str = FETCHING
    at: float = 0.0  # when the claimant last wrote it (its clock: claims compare against their own writer's pace)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Claim:
        return cls(**json.loads(data))


def waiting_verdict(claim: Claim | None, last_change_s: float) -> str:
    """What an agent waiting on someone else's claim does now: ``copy`` (ready), ``store``
    (failed, gone, or silent for `SILENT_AFTER_S`), or ``wait``. ``last_change_s``: seconds
    since the waiter last saw the claim's revision move (the waiter's clock, not the claimant's)."""
    if claim is None or claim.state == FAILED:
        return "store"
    if claim.state == READY:
        return "copy"
    return "store" if last_change_s > SILENT_AFTER_S else "wait"


class FetchClaims:
    """The claims of one job's agents, in its KV bucket."""

    def __init__(self, kv):
        self._kv = kv

    async def claim(self, node: str, version: int, mine: Claim) -> Claim | None:
        """None when this agent now holds the claim (it downloads); else the holder's claim."""
        key = claim_key(node, version)
        for _ in range(3):  # a claim purged between our create and our read: create again
            try:
                await self._kv.create(key, mine.to_json())
                return None
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            held = await self.read(node, version)
            if held is not None:
                return held
        return None  # unclaimable: download from the store, unshared

    async def read(self, node: str, version: int) -> Claim | None:
        return (await self._read_with_revision(claim_key(node, version)))[0]

    async def _read_with_revision(self, key: str) -> tuple[Claim | None, int]:
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None, 0
        return Claim.from_json(entry.value), entry.revision

    async def mark(self, node: str, version: int, claim: Claim, state: str) -> None:
        await self._kv.put(claim_key(node, version), replace(claim, state=state, at=time.time()).to_json())

    async def heartbeat(self, node: str, version: int, claim: Claim) -> None:
        """Refresh the claim every `HEARTBEAT_S` until cancelled (the download is over)."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self.mark(node, version, claim, FETCHING)
            except Exception as e:  # noqa: BLE001 (NATS away: the waiters fall back to the store)
                log.warning("fetch claim not refreshed", version=version, error=str(e))

    async def wait(self, node: str, version: int, poll_s: float = 0.25) -> Claim | None:
        """The claim once ready, or None once the waiter should go to the store itself."""
        key = claim_key(node, version)
        revision, moved = -1, time.monotonic()
        while True:
            claim, rev = await self._read_with_revision(key)
            if rev != revision:
                revision, moved = rev, time.monotonic()
            verdict = waiting_verdict(claim, time.monotonic() - moved)
            if verdict != "wait":
                return claim if verdict == "copy" else None
            await asyncio.sleep(poll_s)

    async def forget(self, node: str, version: int) -> None:
        """Remove a claim whose version its claimant no longer holds (best effort)."""
        try:
            await self._kv.purge(claim_key(node, version))
        except Exception as e:  # noqa: BLE001 (a leftover claim only costs a waiter one failed copy)
            log.warning("fetch claim not removed", version=version, error=str(e))
