"""Agent-side timeouts of environment calls: a hung step fails its episode, not its group."""

from __future__ import annotations

import time

import aiohttp
import pytest
import torch

from kuberl.workloads.agentenv.server import EnvSettings
from kuberl.workloads.buffer.records import Prompt
from kuberl.workloads.engines.batching import BatchingEngine
from kuberl.workloads.engines.torch_engine import TorchEngine
from kuberl.workloads.policy.tiny.model import seeded_model
from tests.support.tiny import tiny_tokenizer
from kuberl.workloads.episodes.generate import (
    SamplingSettings,
    _is_read_timeout,
    env_client_timeout,
    episode_url,
    run_group,
)
from kuberl.workloads.spec import RewardSpec
from tests.support.agentenv import serving

torch.set_num_threads(1)
SAMPLING = SamplingSettings(4, 1.0)


def test_the_env_session_timeout_is_bounded_by_the_episode():
    t = env_client_timeout()
    assert t.total is None and t.connect == t.sock_connect == 10 and t.sock_read == 300 + 30
    t = env_client_timeout(episode_timeout_s=1.5, margin_s=0.5, connect_s=2)
    assert (t.total, t.connect, t.sock_read) == (None, 2, 2.0)


def test_only_read_timeouts_end_a_step():
    assert _is_read_timeout(aiohttp.SocketTimeoutError()) and _is_read_timeout(TimeoutError())
    assert not _is_read_timeout(aiohttp.ConnectionTimeoutError())  # never sent: retried like a refused connection
    assert not _is_read_timeout(aiohttp.ClientConnectionError())


def test_steps_go_to_the_advertised_endpoint_else_the_base_url():
    assert episode_url("http://svc:8080", {"episode_id": "e"}) == "http://svc:8080"
    assert episode_url("http://svc:8080", {"endpoint": "http://10.0.0.7:8080/"}) == "http://10.0.0.7:8080"
    for bad in ("10.0.0.7:8080", "file:///etc/passwd", 7):
        with pytest.raises(ValueError, match="not an http"):
            episode_url("http://svc:8080", {"endpoint": bad})


async def test_a_step_slower_than_the_read_timeout_is_an_infrastructure_failure_of_its_episode():
    """The server takes ~3 s per step (its own episode timeout is far away); the session allows
    0.5 s. Every episode of the group ends in about that time as an infrastructure failure
    (masked by the trainer, never trained as a 0); the group is returned."""
    settings = EnvSettings(task="arithmetic", episode_timeout_s=60, latency="lognormal", latency_median_s=3.0,
                           latency_tail=0.01)
    engine = BatchingEngine(TorchEngine(seeded_model(0), seed=0))
    tokenizer = tiny_tokenizer()  # its first load imports transformers: seconds, outside the timed part
    try:
        async with serving(settings) as (server, url), \
                aiohttp.ClientSession(timeout=env_client_timeout(episode_timeout_s=0.3, margin_s=0.2)) as s:
            t0 = time.monotonic()
            group = await run_group(engine, Prompt("p", {"prompt": "1+2=", "answer": "3"}, n_samples=3),
                                    RewardSpec(type="agentEnv", agent_env="slow"), SAMPLING, tokenizer, s,
                                    {"slow": url})
            elapsed = time.monotonic() - t0
            assert server.counters["started"] == 3 and not server.episodes  # each closed after its timeout
    finally:
        await engine.stop()
    assert elapsed < 2.5, elapsed  # not the server's 3 s, and no retried step
    assert [t.reward for t in group] == [0.0, 0.0, 0.0]
    assert all(t.meta["timed_out"] and t.meta["turns"] == 1 for t in group)
    assert all("no answer within the read timeout" in t.failure for t in group)
    assert all(t.loss_mask.sum() > 0 for t in group)  # the generated action is still in the trajectory


async def test_an_answer_within_the_timeout_is_scored_as_usual():
    settings = EnvSettings(task="arithmetic", latency="lognormal", latency_median_s=0.05, latency_tail=0.01)
    engine = BatchingEngine(TorchEngine(seeded_model(0), seed=0))
    try:
        async with serving(settings) as (_, url), \
                aiohttp.ClientSession(timeout=env_client_timeout(episode_timeout_s=1.0, margin_s=0.5)) as s:
            group = await run_group(engine, Prompt("p", {"prompt": "1+2=", "answer": "3"}, n_samples=2),
                                    RewardSpec(type="agentEnv", agent_env="env"), SAMPLING, tiny_tokenizer(), s,
                                    {"env": url})
    finally:
        await engine.stop()
    assert all("timed_out" not in t.meta and t.meta["turns"] == 1 and t.failure is None for t in group)


def test_agents_wait_as_long_as_the_jobs_longest_episode_may_run():
    """The environment's episodeTimeoutSeconds travels in the job's config to every session."""
    from kuberl.operator.children.workload_config import job_workload_config
    from kuberl.workloads.episodes.generate import env_session_timeout
    from tests.support.objects import job as example_job

    agentic = example_job("decoupled-agentic.yaml")
    spec = agentic.spec.to_wire()
    for entry in spec["agentEnvs"]:
        entry["spec"] = {**(entry.get("spec") or {}), "episodeTimeoutSeconds": 900}
    long_episodes = agentic.model_validate({"metadata": agentic.metadata, "spec": spec})
    cfg = job_workload_config(long_episodes)
    assert set(cfg.agent_env_episode_timeouts.values()) == {900}
    assert env_session_timeout(cfg).sock_read == 900 + 30
    # A referenced AgentEnv's own timeout, as read from the cluster.
    from kuberl.operator.api.agentenv import AgentEnvSpec

    spec = agentic.spec.to_wire()
    spec["agentEnvs"] = [{"name": e["name"]} for e in spec["agentEnvs"]]
    referencing = agentic.model_validate({"metadata": agentic.metadata, "spec": spec})
    cfg = job_workload_config(
        referencing,
        referenced_envs={e.name: AgentEnvSpec(episode_timeout_seconds=45) for e in referencing.spec.agent_envs},
    )
    assert env_session_timeout(cfg).sock_read == 45 + 30
