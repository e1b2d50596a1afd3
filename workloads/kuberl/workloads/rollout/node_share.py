"""One download of each weight version per node (rollout.weightFetch: perNode).

The rollout agents of a node agree through the job's KV (`buffer.fetch_claims`) on which of
them downloads a version from the store; that agent serves the version's files from its
scratch (`weights.relay`) and the others copy them from it, checked against the store's
manifest. Whatever goes wrong with a copy (the claimant failed, died or went silent, the
copy broke or did not match), the agent downloads from the store itself: sharing saves
bytes through the store, it is never a reason for a swap to fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kuberl.workloads.buffer.fetch_claims import FAILED, READY, Claim, FetchClaims
from kuberl.workloads.config import NODE_NAME_ENV, POD_IP_ENV, WEIGHT_RELAY_PORT_ENV
from kuberl.workloads.logs import get_logger
from kuberl.workloads.weights.relay import RelayServer

log = get_logger(__name__)

Result = TypeVar("Result")
Peer = tuple[str, str]  # (relay url, token)


def node_identity() -> tuple[str, str, int]:
    """(node name, address the node's other pods reach this one at, relay port). In a pod
    the downward API gives the first two and the operator the port; a local process is on
    this host's loopback, on any free port."""
    node = os.environ.get(NODE_NAME_ENV) or socket.gethostname()
    return node, os.environ.get(POD_IP_ENV) or "127.0.0.1", int(os.environ.get(WEIGHT_RELAY_PORT_ENV, "0"))


class NodeShare:
    """This agent's part in its node's downloads: the claims it makes and the relay it serves."""

    def __init__(self, claims: FetchClaims, scratch: Path, agent_id: str):
        self.claims, self.agent_id = claims, agent_id
        self.node, self._address, self._port = node_identity()
        self.server = RelayServer(scratch, secrets.token_urlsafe(24))
        self.url = ""
        self._led: set[int] = set()  # versions this agent claimed: it removes their claims when it drops them

    async def start(self) -> None:
        # The address the node's other agents use and nothing else: the pod's, or loopback for a local run.
        self.url = await self.server.start(self._address, self._port)
        log.info("weight relay serving", agent=self.agent_id, node=self.node, url=self.url)

    async def stop(self) -> None:
        await self.server.stop()

    async def fetch(self, version: int, fetch: Callable[[Peer | None], Result],
                    got: Callable[[Result], int]) -> tuple[Result, str]:
        """``fetch(peer)`` once, in a thread: from the store (peer None) when this agent
        claims ``version``, else from the claimant's relay, else (the copy failed) from the
        store after all. ``got(result)``: the version ``result`` holds (an older whole one
        when the store could not rebuild ``version``). Returns the result and where it came
        from: ``store``, ``store-claimed`` or ``relay``."""
        mine = Claim(self.agent_id, self.url, self.server.token, at=time.time())
        try:
            holder = await self.claims.claim(self.node, version, mine)
        except Exception as e:  # noqa: BLE001 (NATS away: download unshared)
            log.warning("fetch claim failed; downloading unshared", version=version, error=str(e))
            return await asyncio.to_thread(fetch, None), "store"
        if holder is None:
            return await self._download_for_the_node(version, mine, fetch, got), "store-claimed"
        try:
            ready = await self.claims.wait(self.node, version)
        except Exception as e:  # noqa: BLE001
            log.warning("fetch claim unreadable; downloading from the store", version=version, error=str(e))
            ready = None
        if ready is not None:
            try:
                return await asyncio.to_thread(fetch, (ready.url, ready.token)), "relay"
            except Exception as e:  # noqa: BLE001 (a dead, slow or wrong relay: the store has it all)
                log.warning("copy from the node's fetcher failed; downloading from the store", version=version,
                            relay=ready.url, claimant=ready.agent, error=str(e)[:300])
        return await asyncio.to_thread(fetch, None), "store"

    async def _download_for_the_node(self, version: int, mine: Claim, fetch: Callable[[Peer | None], Result],
                                     got: Callable[[Result], int]) -> Result:
        self._led.add(version)
        beat = asyncio.create_task(self.claims.heartbeat(self.node, version, mine))
        outcome = FAILED
        try:
            result = await asyncio.to_thread(fetch, None)
            if got(result) == version:
                outcome = READY
            return result
        finally:
            beat.cancel()
            with contextlib.suppress(Exception):  # unmarked, the claim falls silent and waiters give up on it
                await self.claims.mark(self.node, version, mine, outcome)

    async def forget_before(self, version: int) -> None:
        """Remove the claims of the versions before ``version`` that this agent made: it no
        longer holds their files."""
        for old in sorted(v for v in self._led if v < version):
            self._led.discard(old)
            await self.claims.forget(self.node, old)
