"""The rollout agent: pull prompts, run groups, publish trajectories, hot-swap weights."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from kuberl.workloads.buffer.admin import BufferConfig
from kuberl.workloads.buffer.staleness import staleness_rule, staleness_weight
from kuberl.workloads.buffer.consumers import PromptLease
from kuberl.workloads.buffer.stream import JobBuffer
from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.engines.base import Engine
from kuberl.workloads.engines.batching import BatchingEngine, DispatchTracker
from kuberl.workloads.engines.torch_engine import TorchEngine
from kuberl.workloads.logs import get_logger
from kuberl.workloads.observe.rollout_metrics import RolloutMetrics
from kuberl.workloads.observe.uploads import run_files
from kuberl.workloads.policy.job_model import job_model_dir, job_tokenizer
from kuberl.workloads.policy.tiny.model import load_pretrained
from kuberl.workloads.policy.tokenizer import Tokenizer
from kuberl.workloads.episodes.generate import SamplingSettings, env_session_timeout, run_group
from kuberl.workloads.rollout.load_records import LoadRecords
from kuberl.workloads.rollout.node_share import NodeShare, Peer
from kuberl.workloads.episodes.rewards import python_runner
from kuberl.workloads.weights.manifest import Manifest, local_versions
from kuberl.workloads.weights.stages import StageClock
from kuberl.workloads.weights.sync import weight_store

log = get_logger(__name__)


KEEPALIVE_S = 5.0
VERSION_POLL_S = 0.5  # the job state is read this often when the KV watch is quiet (or lost)
ABANDON_AT_MOST = 2  # abandoned attempts per prompt before one is let run to the end


class TrainerClock:
    """The trainer's policy version as announced in the job KV, and waiting on it."""

    def __init__(self) -> None:
        self.version = -1
        self._moved = asyncio.Condition()

    async def advance(self, version: int) -> None:
        if version > self.version:
            async with self._moved:
                self.version = version
                self._moved.notify_all()

    async def wait_beyond(self, version: int) -> None:
        """Returns once a version newer than ``version`` is announced."""
        async with self._moved:
            await self._moved.wait_for(lambda: self.version > version)

    async def wait_until_untrainable(self, group: DispatchTracker, max_off_policy_steps: int,
                                     rule: dict | None = None) -> None:
        """Returns once the group's samples are too stale for the trainer to use.

        Not before its first batch runs: a group queued behind a pending weight swap
        generates on the new weights.
        """
        await group.dispatched.wait()
        async with self._moved:
            await self._moved.wait_for(lambda: staleness_weight(group.first_version, self.version, max_off_policy_steps,
                                                                **(rule or {})) is None)


def make_engine(cfg: WorkloadConfig, agent_id: str) -> Engine:
    """The engine ``cfg.rollout.engine`` names, at version -1 (the first announced version loads into it).

    ``sglang``: a client of the SGLang server at ``$KUBERL_ENGINE_URL`` (one server per agent
    under `kuberl run`) or ``rollout.engineUrl`` (the pod's engine container); ``torch``: the
    in-process engine (CPU jobs).
    """
    if cfg.rollout.engine == "sglang":
        from kuberl.workloads.engines.sglang.engine import (
            SGLangEngine,  # httpx; only rollout pods with a server need it
        )

        return SGLangEngine.from_config(cfg, version=-1)
    if cfg.rollout.engine == "torch":
        return TorchEngine(load_pretrained(job_model_dir(cfg)), version=-1,
                           seed=(hash(agent_id) + int(time.time())) % 2**31)
    raise ValueError(f"unknown rollout engine {cfg.rollout.engine!r}")


@dataclass(frozen=True)
class Fetched:
    """A version's files, fetched and checked, not yet in the engine."""

    path: Path
    digest: str
    version: int  # what the files are: older than `asked` when the store could not rebuild it
    asked: int
    source: str  # store, store-claimed (downloaded for the node) or relay (copied from the node's download)
    clock: StageClock
    started: float  # perf_counter at the fetch's start


class RolloutAgent:
    def __init__(self, cfg: WorkloadConfig, agent_id: str, engine: Engine | None = None,
                 tokenizer: Tokenizer | None = None):
        self.cfg, self.agent_id = cfg, agent_id
        self.tokenizer = tokenizer if tokenizer is not None else job_tokenizer(cfg)
        self.store = weight_store(cfg)
        self.buffer: JobBuffer | None = None
        self.engine = engine if engine is not None else make_engine(cfg, agent_id)
        self.metrics = RolloutMetrics()
        self.batcher = BatchingEngine(self.engine, observer=self.metrics)
        self.active: set[asyncio.Task] = set()
        self.accepting = asyncio.Event()
        self.accepting.set()
        self.groups_done = 0
        self.groups_abandoned = 0
        self.swaps = 0
        self.load_records = LoadRecords(run_files(cfg), agent_id)
        self.share: NodeShare | None = None  # weightFetch perNode, once the buffer (its claims) is open
        self._background: set[asyncio.Task] = set()
        self.trainer = TrainerClock()
        # Fetched versions land here and the engine loads them from here: a directory the
        # SGLang container reads too (an emptyDir in the rollout pod, $KUBERL_ENGINE_SCRATCH).
        shared = os.environ.get("KUBERL_ENGINE_SCRATCH")
        self._owns_scratch = not shared
        self.scratch = Path(shared or tempfile.mkdtemp(prefix="kuberl-versions-"))

    def _fetch(self, version: int, clock: StageClock, peer: Peer | None = None) -> tuple[Path, Manifest]:
        """The version's files (rebuilt against the version the engine holds when stored as
        deltas; copied whole from ``peer``, the node's download, when given), checked
        against the store's manifest; an older whole version when the store lost a parent of
        ``version`` (`WeightStore.fetch`'s fallback)."""
        path, manifest = self.store.fetch(version, self.scratch / f"v{version:08d}", have=local_versions(self.scratch),
                                          whole_if_parent_missing=True, clock=clock, peer=peer)
        return Path(path), manifest

    async def fetch_version(self, version: int) -> Fetched:
        """`_fetch` in a thread: with weightFetch perNode, once per node (`NodeShare`)."""
        clock, started = StageClock(), time.perf_counter()
        if self.share is None:
            (path, manifest), source = await asyncio.to_thread(self._fetch, version, clock), "store"
        else:
            (path, manifest), source = await self.share.fetch(version, lambda peer: self._fetch(version, clock, peer),
                                                              lambda got: got[1].version)
        self.metrics.fetched(source)
        return Fetched(path, manifest.digest, manifest.version, version, source, clock, started)

    def _drop_versions_before(self, version: int) -> None:
        """Once the engine holds ``version``, older fetched copies are dead weight."""
        for old in self.scratch.glob("v*"):
            if old.is_dir() and old.name < f"v{version:08d}":
                shutil.rmtree(old, ignore_errors=True)

    async def load_version(self, version: int) -> int:
        """Fetch and swap to ``version``; returns the version the engine holds after (an
        older whole one when ``version`` could not be rebuilt: see `_fetch`)."""
        return await self.swap_to(await self.fetch_version(version))

    async def swap_to(self, fetched: Fetched) -> int:
        """Load fetched files into the engine; returns the version the engine holds after."""
        version, clock = fetched.version, fetched.clock
        if version <= self.engine.policy_version:
            # The fallback is what the engine serves already, or older: never swap backwards.
            return self.engine.policy_version
        if self.cfg.rollout.weight_swap == "drain":
            self.accepting.clear()
            while self.active:
                await asyncio.wait(set(self.active))
        with clock.stage("engine_load"):  # the running batch finishing, then the engine's load (pause → resume)
            await self.batcher.swap(fetched.path, version)
        self._drop_versions_before(version)
        if self.share is not None:
            await self.share.forget_before(version)
        self.accepting.set()
        self.swaps += 1
        seconds = time.perf_counter() - fetched.started
        stages = clock.seconds()
        self.metrics.swapped(version, seconds, stages)
        log.info("weights swapped", agent=self.agent_id, version=version, digest=fetched.digest, source=fetched.source,
                 policy=self.cfg.rollout.weight_swap, seconds=round(seconds, 3), stages=stages)
        # Off the swap's path: a slow store delays the record, never the next swap.
        record = asyncio.create_task(asyncio.to_thread(self.load_records.loaded, version, fetched.digest,
                                                       fetched.source))
        self._background.add(record)
        record.add_done_callback(self._background.discard)
        if self.buffer is not None:
            try:
                await self.buffer.state.report_agent(self.agent_id, version)
            except Exception as e:  # noqa: BLE001 (a status nicety never stops generation)
                log.warning("loaded version not reported", agent=self.agent_id, error=str(e))
        return version

    async def _first_load(self, buf: JobBuffer, version: int) -> None:
        """Load the announced version, retrying (the newest announced) while the store is away:
        an agent restarted during an S3 outage waits for it instead of exiting in a loop."""
        delay = 0.5
        while True:
            try:
                return await self.load_version(version)
            except Exception as e:  # noqa: BLE001 (a pruned version or an outage: read the state again)
                log.warning("first weight load failed; retrying", version=version, retry_in_s=delay, error=str(e)[:200])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            version = (await buf.state.get())[0].policy_version

    async def watch_versions(self, buf: JobBuffer) -> None:
        """Follow the trainer's version in the job KV; load each newest version once the last load is done.

        The KV is watched, so a new version is fetched the moment it is announced. The load
        runs beside the watch: a swap waits for the engine batch now running, and the
        trainer clock must keep moving meanwhile (it is what dooms stale groups).
        """
        loading: asyncio.Task | None = None
        try:
            async with contextlib.aclosing(buf.state.follow(fallback_s=VERSION_POLL_S)) as states:
                async for state in states:
                    if not state.weights_manifest:
                        continue
                    await self.trainer.advance(state.policy_version)
                    self.metrics.trainer_version(state.policy_version)
                    idle = loading is None or loading.done()
                    if idle and state.policy_version > self.engine.policy_version:
                        loading = asyncio.create_task(self._load_latest())
        finally:
            if loading is not None:
                loading.cancel()

    async def _load_latest(self) -> None:
        """Load the newest announced version, again until none newer was announced meanwhile.
        A version announced while the engine loads the last one is downloaded meanwhile."""
        upcoming: asyncio.Task | None = None
        try:
            while self.trainer.version > self.engine.policy_version:
                upcoming = upcoming or asyncio.create_task(self.fetch_version(self.trainer.version))
                try:
                    fetched = await upcoming
                except Exception as e:  # a pruned or half-visible version: the next state read retries
                    log.warning("weight swap failed", stage="fetch", version=self.trainer.version, error=str(e))
                    return
                finally:
                    upcoming = None
                swap = asyncio.create_task(self.swap_to(fetched))
                newer = asyncio.create_task(self.trainer.wait_beyond(fetched.asked))
                await asyncio.wait({swap, newer}, return_when=asyncio.FIRST_COMPLETED)
                if newer.done():  # the next version's download overlaps this one's load
                    upcoming = asyncio.create_task(self.fetch_version(self.trainer.version))
                newer.cancel()
                try:
                    await swap
                except Exception as e:
                    log.warning("weight swap failed", stage="load", version=fetched.version, error=str(e))
                    return
                if (
                    fetched.version < fetched.asked
                ):  # fell back to an older whole version: wait for the next one announced
                    return
        finally:
            if upcoming is not None:
                upcoming.cancel()

    async def work(self, buf: JobBuffer, lease: PromptLease, session: aiohttp.ClientSession | None) -> None:
        async def keepalive() -> None:
            while True:
                await asyncio.sleep(KEEPALIVE_S)
                await lease.keepalive()

        ka = asyncio.create_task(keepalive())
        try:
            p = lease.prompt
            trajs = await self._group_unless_untrainable(lease, session)
            if trajs is None:
                self.groups_abandoned += 1
                self.metrics.group("abandoned")
                log.info("group abandoned: too stale to train; prompt handed back", prompt=p.prompt_id,
                         trainer_version=self.trainer.version, attempt=lease.deliveries)
                await lease.nak()
                return
            for t in trajs:
                t.meta["agent"] = self.agent_id
            await buf.publish_trajectories(trajs)
            await lease.ack()
            self.groups_done += 1
            self.metrics.group("published")
        except Exception as e:
            self.metrics.group("failed")
            log.error("group failed; prompt handed back", prompt=lease.prompt.prompt_id, error=repr(e))
            with contextlib.suppress(Exception):
                await lease.nak(delay=1.0)
        finally:
            ka.cancel()

    async def _group_unless_untrainable(self, lease: PromptLease, session: aiohttp.ClientSession | None) -> list | None:
        """The prompt's scored group, or None when it became untrainable before it was done."""
        p = lease.prompt
        tracker = DispatchTracker(self.batcher)
        group = asyncio.create_task(run_group(tracker, p, self.cfg.reward,
                                              SamplingSettings.for_stage(self.cfg, p.stage), self.tokenizer, session,
                                              self.cfg.agent_envs))
        if not self.cfg.rollout.abandon_stale_groups or lease.deliveries > ABANDON_AT_MOST:
            return await group
        doomed = asyncio.create_task(self.trainer.wait_until_untrainable(
            tracker, self.cfg.max_off_policy_steps, staleness_rule(self.cfg.algorithm.off_policy_correction.staleness)))
        try:
            await asyncio.wait({group, doomed}, return_when=asyncio.FIRST_COMPLETED)
            if group.done():
                return group.result()
            group.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await group
            return None
        finally:
            for task in (group, doomed):
                task.cancel()

    def _finished(self, task: asyncio.Task) -> None:
        self.active.discard(task)
        self.metrics.groups_in_flight(len(self.active))

    async def run(self) -> None:
        buf = await JobBuffer.open(self.cfg.buffer.url, self.cfg.job.namespace, self.cfg.job.name,
                                   BufferConfig.from_spec(self.cfg.buffer))
        self.buffer = buf  # where load_version reports the version it loaded
        if self.cfg.rollout.weight_fetch == "perNode":
            self.share = NodeShare(buf.fetch_claims, self.scratch, self.agent_id)
            await self.share.start()
        session = (
            aiohttp.ClientSession(timeout=env_session_timeout(self.cfg)) if self.cfg.reward.type == "agentEnv" else None
        )
        watcher = None
        try:
            # Wait for the trainer's first version: generating with untrained weights would waste work.
            while True:
                state, _ = await buf.state.get()
                if state.weights_manifest:
                    break
                await asyncio.sleep(0.2)
            await self._first_load(buf, state.policy_version)
            if self.cfg.reward.type == "python":
                # A reward that cannot be imported is the job's spec, not a sample: stop here, saying why.
                await python_runner(self.cfg.reward.python).ready()
            watcher = asyncio.create_task(self.watch_versions(buf))
            prompts = await buf.prompt_consumer()
            concurrency = self.cfg.rollout.concurrency
            log.info("rollout agent ready", agent=self.agent_id, version=self.engine.policy_version,
                     concurrency=concurrency)
            while True:
                await self.accepting.wait()
                room = concurrency - len(self.active)
                if room <= 0:
                    await asyncio.wait(set(self.active), return_when=asyncio.FIRST_COMPLETED)
                    continue
                leases = await prompts.fetch(room, timeout=0.5)
                for lease in leases:
                    task = asyncio.create_task(self.work(buf, lease, session))
                    self.active.add(task)
                    task.add_done_callback(self._finished)
                self.metrics.groups_in_flight(len(self.active))
                if watcher.done():
                    watcher.result()  # surfaces a crashed watcher
        finally:
            if watcher is not None:
                watcher.cancel()
            await self.batcher.stop()
            if self.share is not None:
                await self.share.stop()
            close = getattr(self.engine, "close", None)
            if close is not None:
                close()
            if session is not None:
                await session.close()
            await buf.close()
            if self._owns_scratch:
                shutil.rmtree(self.scratch, ignore_errors=True)
