"""An AgentEnv with several replicas behind a Service: steps must reach the pod that owns the episode.

Three reference server processes (multi-turn calculator-tool) sit behind a round-robin proxy
that plays the Service. Episodes run through the client code path the rollout agent uses
(`run_group` → `env_episode`), with a scripted policy that always makes one tool call and
then answers, so every episode takes two steps. With the endpoint advertised, every
episode succeeds and all replicas serve some; without it (the control), steps land on pods
that never saw the episode and get 404.
"""

from __future__ import annotations

import asyncio
import re
from contextlib import asynccontextmanager

import aiohttp

from kuberl.workloads.buffer.records import Prompt
from kuberl.workloads.engines.base import Completion, Engine
from kuberl.workloads.engines.batching import BatchingEngine
from kuberl.workloads.policy.tiny.checkpoint import BOS_ID, EOS_ID
from tests.support.tiny import tiny_tokenizer
from kuberl.workloads.episodes.generate import SamplingSettings, env_client_timeout, env_episode, run_group
from kuberl.workloads.spec import RewardSpec
from tests.support.agentenv import start_process, stats, wait_healthy
from tests.support.round_robin import RoundRobinProxy

TOK = tiny_tokenizer()
REPLICAS = 3
REWARD = RewardSpec(type="agentEnv", agent_env="calc")
SHORT = env_client_timeout(episode_timeout_s=20, margin_s=0)  # a hang fails the test in seconds, not minutes


class ToolThenAnswer(Engine):
    """A policy that calls the calculator on the problem, then answers with what it returned."""

    policy_version = 0

    def generate(self, requests):
        out = []
        for r in requests:
            text = TOK.decode([t for t in r.prompt_ids if t not in (BOS_ID, EOS_ID)])
            tool = re.findall(r"=(-?\d+)\n", text)
            action = tool[-1] if tool else "c:" + text.rstrip("=")
            ids = TOK.encode(action) + [EOS_ID]
            out.append([Completion(ids, [-0.1] * len(ids), "stop", self.policy_version) for _ in range(r.n)])
        return out

    def load_state_dict(self, tensors, version):
        self.policy_version = version


def _prompts(n: int) -> list[Prompt]:
    return [Prompt(f"p{i}", {"prompt": f"{i + 2}*{i + 3}=", "answer": str((i + 2) * (i + 3))},
                   n_samples=4) for i in range(n)]


@asynccontextmanager
async def replicas(advertise_self: bool):
    """(proxy, replica URLs): the replicas behind their Service, each advertising its own URL or nothing.

    A context manager, not an async fixture: fixtures run on the session's event loop, and a
    proxy served there would not answer while a test runs on its own loop."""
    procs = [start_process("--task", "calculator-tool", "--concurrency", "64", advertise_self=advertise_self)
             for _ in range(REPLICAS)]
    try:
        for proc, url in procs:
            await asyncio.to_thread(wait_healthy, proc, url)
        proxy = RoundRobinProxy([url for _, url in procs])
        await proxy.start()
        try:
            yield proxy, [url for _, url in procs]
        finally:
            await proxy.stop()
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            proc.wait(timeout=10)


async def test_multi_turn_episodes_through_a_balancing_service_reach_their_replica():
    engine = BatchingEngine(ToolThenAnswer())
    try:
        async with replicas(advertise_self=True) as (proxy, urls), aiohttp.ClientSession(timeout=SHORT) as s:
            groups = await asyncio.gather(*(run_group(engine, p, REWARD, SamplingSettings(16, 1.0), TOK, s,
                                                      {"calc": proxy.url})
                                            for p in _prompts(12)))
            per_replica = [stats(u) for u in urls]
            through_service = sum(proxy.sent.values())
    finally:
        await engine.stop()
    trajectories = [t for g in groups for t in g]
    assert len(trajectories) == 48
    assert all(t.meta["turns"] == 2 and t.reward == 1.0 for t in trajectories)  # two steps each, all on the owner
    assert all(st["started"] > 0 for st in per_replica), per_replica  # spread over every replica
    assert sum(st["started"] for st in per_replica) == sum(st["finished"] for st in per_replica) == 48
    assert all(st["open"] == 0 for st in per_replica)  # DELETE reached the owner too
    assert through_service == 48  # only the resets went through the Service
    assert all(st["endpoint"] == u for st, u in zip(per_replica, urls, strict=True))


async def test_control_without_the_endpoint_steps_get_lost_among_replicas():
    """The same run, with the servers advertising nothing (and POD_IP unset): steps follow the
    Service's balancing and mostly reach replicas that never saw the episode."""
    engine = BatchingEngine(ToolThenAnswer())
    try:
        async with replicas(advertise_self=False) as (proxy, urls), aiohttp.ClientSession(timeout=SHORT) as s:
            results = await asyncio.gather(*(env_episode(engine, s, proxy.url, p, i, SamplingSettings(16, 1.0), TOK)
                                             for p in _prompts(12) for i in range(p.n_samples)), return_exceptions=True)
            assert all(stats(u)["endpoint"] is None for u in urls)
    finally:
        await engine.stop()
    # A step the replica cannot serve is an infrastructure failure of its sample (masked), not an error of the group.
    not_found = [r for r in results if r.failure and "404" in r.failure]
    assert len(not_found) > len(results) // 2, [r.failure for r in results]
