"""The job-state document's store: one KV key, written by compare-and-set, followed by a watch."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace

import nats
import nats.errors
import nats.js.errors

from kuberl.workloads.buffer.broker_away import BROKER_AWAY
from kuberl.workloads.buffer.state import JobState
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)



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
        return JobState.from_json(entry.value), entry.revision

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
                    yield JobState.from_json(entry.value)
                    continue
                # The watch's "caught up" marker, a quiet spell, or no watch: read the state.
                try:
                    state = (await self.get())[0]
                except BROKER_AWAY as e:
                    log.warning("job state unreadable; the broker is away", error=type(e).__name__)
                    await asyncio.sleep(fallback_s)
                    continue
                yield state
        finally:
            if watcher is not None:
                await _stop_quietly(watcher)

    async def update(self, mutate: Callable[[JobState], JobState], attempts: int = 32,
                     broker_away_for_s: float = 120.0) -> JobState:
        """Apply ``mutate`` atomically: re-read and retry when another writer got there first,
        and while the broker is away (up to ``broker_away_for_s``). Every writer's mutation
        sets absolute values (the trainer's own progress, a version that only moves forward),
        so applying one again after an answer lost with the connection changes nothing."""
        away_until = time.monotonic() + broker_away_for_s
        lost = 0
        while lost < attempts:
            try:
                state, rev = await self.get()
                new = mutate(replace(state, counters=dict(state.counters), metrics=replace(state.metrics)))
                value = new.to_json()
                if rev == 0:
                    await self._kv.create(self.KEY, value)
                else:
                    await self._kv.update(self.KEY, value, last=rev)
                return new
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
                lost += 1
                await asyncio.sleep(0.01)
            except BROKER_AWAY as e:
                if time.monotonic() > away_until:
                    raise
                log.warning("job state update waits; the broker is away", error=type(e).__name__)
                await asyncio.sleep(0.5)
        raise BufferError(f"job state update lost the race {attempts} times")

    async def publish_version(self, version: int, manifest_uri: str) -> JobState:
        """Announce a new policy version; never moves the version backwards."""

        def bump(s: JobState) -> JobState:
            if version <= s.policy_version and s.weights_manifest is not None:
                return s
            return replace(s, policy_version=version, weights_manifest=manifest_uri)

        return await self.update(bump)

    # Each rollout agent's loaded policy version, one key per agent (its pod's name): the
    # operator shows them in the RolloutPool's status.policyVersions.
    AGENT_PREFIX = "agents."

    async def report_agent(self, agent_id: str, version: int) -> None:
        await self._kv.put(self.AGENT_PREFIX + agent_id, json.dumps({"version": version, "at": time.time()}).encode())

    async def agent_versions(self, agents: Iterable[str] | None = None) -> dict[str, int]:
        """{agent id: loaded version} of the given agents that reported, or of every agent
        that did (none: {}). Naming the agents reads one key each; listing every key costs
        the server an ephemeral consumer, which an operator polling 500 pools cannot afford."""
        if agents is None:
            try:
                agents = [k[len(self.AGENT_PREFIX):] for k in await self._kv.keys() if k.startswith(self.AGENT_PREFIX)]
            except nats.js.errors.NoKeysError:
                return {}

        async def loaded(agent: str) -> int | None:
            try:
                entry = await self._kv.get(self.AGENT_PREFIX + agent)
            except nats.js.errors.KeyNotFoundError:
                return None  # never reported, or removed meanwhile
            return int(json.loads(entry.value)["version"])

        # All at once: one round trip's wait, not one per agent.
        agents = list(agents)
        versions = await asyncio.gather(*(loaded(a) for a in agents))
        return {a: v for a, v in zip(agents, versions, strict=True) if v is not None}

    async def add_counters(self, **deltas: int) -> JobState:
        def add(s: JobState) -> JobState:
            for k, v in deltas.items():
                s.counters[k] = s.counters.get(k, 0) + v
            return s

        return await self.update(add)
