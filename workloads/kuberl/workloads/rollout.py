"""The rollout agent: `python -m kuberl.workloads.rollout`.

Pulls prompts (the stream's consumer bounds how many are leased at once), runs one group
per prompt — a batched generation scored by the verifier, or multi-turn episodes against
the AgentEnv — publishes the trajectories tagged with the policy version that produced
them, and only then acks the prompt (a crash gives it back). A watcher follows the job KV
and hot-swaps weights when a new version is announced:

* ``pause``: the swap happens between two engine batches; in-flight episodes continue on
  the new weights (each token's behaviour logprob is recorded, so the trainer corrects).
* ``drain``: no new prompts are started; the swap waits until in-flight groups finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import aiohttp
import torch

from kuberl.workloads.buffer import JobBuffer, PromptLease
from kuberl.workloads.config import WorkloadConfig, load_config
from kuberl.workloads.engines import Engine, TorchEngine
from kuberl.workloads.episodes import BatchingEngine, SamplingSettings, run_group
from kuberl.workloads.logs import get_logger
from kuberl.workloads.models import seeded_model
from kuberl.workloads.trainer import buffer_config
from kuberl.workloads.weightsync import fetch_policy, weight_store

log = get_logger(__name__)
KEEPALIVE_S = 5.0


def make_engine(cfg: WorkloadConfig, agent_id: str) -> Engine:
    """The engine ``cfg.rollout.engine`` names, at version -1 (the first announced version loads into it).

    ``sglang``: a client of the SGLang server at ``rollout.engineUrl`` / ``$KUBERL_ENGINE_URL``
    (the pod's sidecar); ``torch``: the in-process engine (CPU jobs, ``kuberl run``).
    """
    if cfg.rollout.engine == "sglang":
        from kuberl.workloads.sglang_engine import SGLangEngine  # httpx; only rollout pods with a server need it

        return SGLangEngine.from_config(cfg, version=-1)
    if cfg.rollout.engine == "torch":
        return TorchEngine(seeded_model(0), version=-1, seed=(hash(agent_id) + int(time.time())) % 2**31)
    raise ValueError(f"unknown rollout engine {cfg.rollout.engine!r}")


class RolloutAgent:
    def __init__(self, cfg: WorkloadConfig, agent_id: str, engine: Engine | None = None):
        self.cfg, self.agent_id = cfg, agent_id
        self.store = weight_store(cfg)
        self.engine = engine if engine is not None else make_engine(cfg, agent_id)
        self.batcher = BatchingEngine(self.engine)
        self.active: set[asyncio.Task] = set()
        self.accepting = asyncio.Event()
        self.accepting.set()
        self.groups_done = 0
        self.swaps = 0

    def sampling(self, stage: int) -> SamplingSettings:
        length = self.cfg.algorithm.max_response_length
        if self.cfg.curriculum is not None and stage < len(self.cfg.curriculum.stages):
            length = self.cfg.curriculum.stages[stage].max_response_length or length
        return SamplingSettings(length, self.cfg.algorithm.temperature)

    async def load_version(self, version: int) -> None:
        tensors = await asyncio.to_thread(fetch_policy, self.store, version)
        if self.cfg.rollout.weight_swap == "drain":
            self.accepting.clear()
            while self.active:
                await asyncio.wait(set(self.active))
        await self.batcher.swap(tensors, version)
        self.accepting.set()
        self.swaps += 1
        log.info("weights swapped", agent=self.agent_id, version=version, policy=self.cfg.rollout.weight_swap)

    async def watch_versions(self, buf: JobBuffer) -> None:
        while True:
            state, _ = await buf.state.get()
            if state.weights_manifest and state.policy_version > self.engine.policy_version:
                try:
                    await self.load_version(state.policy_version)
                except Exception as e:  # a pruned or half-visible version: the next poll catches up
                    log.warning("weight swap failed", version=state.policy_version, error=str(e))
            await asyncio.sleep(0.1)

    async def work(self, buf: JobBuffer, lease: PromptLease, session: aiohttp.ClientSession | None) -> None:
        async def keepalive() -> None:
            while True:
                await asyncio.sleep(KEEPALIVE_S)
                await lease.keepalive()

        ka = asyncio.create_task(keepalive())
        try:
            p = lease.prompt
            trajs = await run_group(self.batcher, p, self.cfg.reward, self.sampling(p.stage), session, self.cfg.agent_envs)
            for t in trajs:
                t.meta["agent"] = self.agent_id
            await buf.publish_trajectories(trajs)
            await lease.ack()
            self.groups_done += 1
        except Exception as e:
            log.error("group failed; prompt handed back", prompt=lease.prompt.prompt_id, error=repr(e))
            with contextlib.suppress(Exception):
                await lease.nak(delay=1.0)
        finally:
            ka.cancel()

    async def run(self) -> None:
        buf = await JobBuffer.open(self.cfg.buffer.url, self.cfg.job.namespace, self.cfg.job.name, buffer_config(self.cfg))
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) if self.cfg.reward.type == "agentEnv" else None
        watcher = None
        try:
            # Wait for the trainer's first version: generating with untrained weights would waste work.
            while True:
                state, _ = await buf.state.get()
                if state.weights_manifest:
                    break
                await asyncio.sleep(0.2)
            await self.load_version(state.policy_version)
            watcher = asyncio.create_task(self.watch_versions(buf))
            prompts = await buf.prompt_consumer()
            concurrency = self.cfg.rollout.concurrency
            log.info("rollout agent ready", agent=self.agent_id, version=self.engine.policy_version, concurrency=concurrency)
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
                    task.add_done_callback(self.active.discard)
                if watcher.done():
                    watcher.result()  # surfaces a crashed watcher
        finally:
            if watcher is not None:
                watcher.cancel()
            await self.batcher.stop()
            close = getattr(self.engine, "close", None)
            if close is not None:
                close()
            if session is not None:
                await session.close()
            await buf.close()


def main() -> None:
    torch.set_num_threads(int(os.environ.get("KUBERL_TORCH_THREADS", "1")))
    cfg = load_config()
    agent_id = os.environ.get("KUBERL_AGENT_ID", f"agent-{os.getpid()}")
    log.info("rollout agent starting", job=cfg.job.name, agent=agent_id, engine=cfg.rollout.engine)
    asyncio.run(RolloutAgent(cfg, agent_id).run())


if __name__ == "__main__":
    main()
