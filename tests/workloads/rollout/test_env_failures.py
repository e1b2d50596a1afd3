"""An environment that fails for infrastructure reasons costs the samples it failed, masked
and counted, never the group and never a reward of 0 trained on."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import torch
from aiohttp import web

from kuberl.workloads.agentenv.faults import Faults
from kuberl.workloads.agentenv.server import EnvSettings
from kuberl.workloads.buffer.records import Prompt
from kuberl.workloads.engines.batching import BatchingEngine
from kuberl.workloads.engines.torch_engine import TorchEngine
from kuberl.workloads.policy.tiny.model import seeded_model
from kuberl.workloads.rl.batch import collate
from kuberl.workloads.episodes.generate import SamplingSettings, env_client_timeout, run_group
from kuberl.workloads.spec import RewardSpec
from tests.support.agentenv import serving
from tests.support.tiny import tiny_tokenizer

torch.set_num_threads(1)
SAMPLING = SamplingSettings(4, 1.0)
REWARD = RewardSpec(type="agentEnv", agent_env="env")


async def groups_from(url: str, n_groups: int, size: int = 4) -> list:
    engine = BatchingEngine(TorchEngine(seeded_model(0), seed=0))
    tokenizer = tiny_tokenizer()
    try:
        async with aiohttp.ClientSession(timeout=env_client_timeout(episode_timeout_s=5, margin_s=5)) as s:
            return list(await asyncio.gather(*(
                run_group(engine, Prompt(f"p{i}", {"prompt": f"{i}+1=", "answer": str(i + 1)}, n_samples=size), REWARD,
                          SAMPLING,
                          tokenizer, s, {"env": url}) for i in range(n_groups))))
    finally:
        await engine.stop()


async def test_dropped_connections_are_retried_and_errors_mask_their_samples():
    settings = EnvSettings(task="arithmetic", seed=7, faults=Faults(drop=0.1, error=0.05))
    async with serving(settings) as (server, url):
        groups = await groups_from(url, n_groups=25)
        counters = dict(server.counters)
    samples = [t for g in groups for t in g]
    assert len(groups) == 25 and all(len(g) == 4 for g in groups)  # every group came back whole
    assert counters["fault_dropped"] >= 10 and counters["fault_errors"] >= 5  # the server did misbehave
    failed = [t for t in samples if t.failure]
    # A dropped connection is retried (the step was never taken); a 500 is not: its sample fails.
    assert 0 < len(failed) <= counters["fault_errors"]
    assert all("500" in t.failure for t in failed)
    batch = collate(groups)
    rows = [i for i, t in enumerate(samples) if t.failure]
    assert batch.mask[rows].sum() == 0 and (batch.advantages[rows] == 0).all()


@pytest.mark.parametrize("answer, problem", [
    ({"observation": "1+1="}, "'episode_id' is None"),
    ({"episode_id": 7, "observation": "x"}, "'episode_id' is 7"),
    ("not json at all", "not JSON"),
])
async def test_an_answer_outside_the_protocol_fails_its_sample(answer, problem):
    async def reset(request: web.Request) -> web.Response:
        if isinstance(answer, str):
            return web.Response(text=answer, content_type="application/json")
        return web.json_response(answer)

    async def close(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.add_routes([web.post("/episodes", reset), web.delete("/episodes/{id}", close)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        [group] = await groups_from(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", n_groups=1, size=2)
    finally:
        await runner.cleanup()
    assert all(problem in t.failure for t in group), [t.failure for t in group]
    assert all(t.loss_mask.sum() == 0 and t.meta["turns"] == 0 for t in group)
