"""The rollout agent abandons groups the trainer could no longer use (real NATS, real S3)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

import pytest
import yaml

from kuberl.workloads.buffer.admin import BufferConfig, create_job_streams
from kuberl.workloads.buffer.records import Prompt
from kuberl.workloads.buffer.stream import JobBuffer
from kuberl.workloads.engines.batching import DispatchTracker
from kuberl.workloads.engines.torch_engine import TorchEngine
from kuberl.workloads.policy.tiny.model import TinyConfig, seeded_model
from kuberl.workloads.rollout.agent import ABANDON_AT_MOST, RolloutAgent, TrainerClock
from kuberl.workloads.weights.sync import publish_policy, weight_store
from tests.support.aio_helpers import cancel_and_wait, wait_until
from tests.support.objects import workload_config_for

# ---- pure: the trainer's clock ------------------------------------------------------------


async def test_trainer_clock_wakes_waiters_only_once_samples_are_untrainable():
    class Batcher:  # what the tracker wraps: only the policy version matters here
        policy_version = 3

    clock = TrainerClock()
    await clock.advance(5)
    group = DispatchTracker(Batcher())
    waiter = asyncio.create_task(clock.wait_until_untrainable(group, max_off_policy_steps=1))
    await asyncio.sleep(0.05)
    assert not waiter.done(), "not judged before its first batch runs: it may run on newer weights"
    group._note(4)  # its first batch ran on version 4: lag 1, trainable
    group._note(3)  # later batches never change the group's version
    await asyncio.sleep(0.05)
    assert not waiter.done() and group.first_version == 4
    await clock.advance(2)  # versions never go back
    assert clock.version == 5
    await clock.advance(6)  # lag 2 > 1
    await asyncio.wait_for(waiter, timeout=1)


# ---- the agent against real servers ---------------------------------------------------------


class SlowEngine(TorchEngine):
    """The tiny torch engine, each batch taking ``delay_s`` longer (a slow episode)."""

    def __init__(self, delay_s: float):
        super().__init__(seeded_model(0), version=-1, seed=0)
        self.delay_s = delay_s
        self.batches = 0

    def generate(self, requests):
        self.batches += 1
        time.sleep(self.delay_s)
        return super().generate(requests)


@pytest.fixture
def job_config(nats_server, s3_server, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    spec = yaml.safe_load((Path(__file__).resolve().parents[3] / "examples" / "tiny-cpu.yaml").read_text())["spec"]
    spec["weightStore"]["bucket"] = s3_bucket
    cfg = workload_config_for(spec, f"abandon-{uuid.uuid4().hex[:8]}", nats_url=nats_server.url,
                              s3_endpoint=s3_server.endpoint, output_dir=str(tmp_path / "out"))
    assert cfg.max_off_policy_steps == 1
    return cfg


async def _announce(cfg, buf: JobBuffer, version: int, manifest: str | None = None) -> None:
    """What the trainer does after a step: weights to S3, then the version into the job KV."""
    if manifest is None:
        manifest = (await asyncio.to_thread(publish_policy, weight_store(cfg), seeded_model(version).state_dict(),
                                            TinyConfig().to_hf(), version, dtype="float32")).uri
    await buf.state.publish_version(version, manifest)


async def _one_group(buf: JobBuffer, timeout: float = 60):
    consumer = await buf.trajectory_consumer(max_off_policy_steps=10**9)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = await asyncio.wait_for(consumer.fetch(64, current_version=0, timeout=0.5), timeout=30)
        if len(batch):
            await batch.ack()
            return list(batch)
    raise AssertionError("no trajectories arrived")


class SlowLoadingEngine(SlowEngine):
    """Each weight load takes ``load_s``; records (version, started, ended) of every load."""

    def __init__(self):
        super().__init__(delay_s=0.0)
        self.load_s, self.loads, self.loading = 0.0, [], None

    def load_dir(self, path, version):
        started, self.loading = time.monotonic(), version
        time.sleep(self.load_s)
        super().load_dir(path, version)
        self.loads.append((version, started, time.monotonic()))


@contextlib.asynccontextmanager
async def agent_on_version_0(cfg, delay_s: float, engine: SlowEngine | None = None):
    """A rollout agent on a slow engine, running against the job's buffer with version 0 loaded."""
    await create_job_streams(cfg.buffer.url, cfg.job.namespace, cfg.job.name,
                             BufferConfig.from_spec(cfg.buffer))  # the operator's part
    buf = await JobBuffer.open(cfg.buffer.url, cfg.job.namespace, cfg.job.name, BufferConfig.from_spec(cfg.buffer))
    engine = engine or SlowEngine(delay_s=delay_s)
    agent = RolloutAgent(cfg, "agent-0", engine=engine)
    running = asyncio.create_task(agent.run())
    try:
        await _announce(cfg, buf, 0)
        await wait_until("version 0 loaded", lambda: engine.policy_version == 0)
        yield buf, agent, engine
    finally:
        ended = await cancel_and_wait(running)
        await buf.close()
    assert isinstance(ended, asyncio.CancelledError), f"the agent failed: {ended!r}"


async def _overtaken_while_generating(cfg, buf: JobBuffer, engine: SlowEngine, prompt: Prompt) -> list:
    """Publish ``prompt``; once its group is generating on version 0, the trainer announces
    versions 1 and 2 (with maxOffPolicySteps=1 nothing of version 0 can be trained then).
    Returns the group that reaches the trajectory stream."""
    await buf.publish_prompts([prompt])
    await wait_until("generation started", lambda: engine.batches >= 1)
    await _announce(cfg, buf, 1)
    await _announce(cfg, buf, 2)
    return await _one_group(buf)


@pytest.mark.servers
async def test_a_group_overtaken_by_the_trainer_is_abandoned_and_generated_again_on_new_weights(job_config):
    async with agent_on_version_0(job_config, delay_s=3.0) as (buf, agent, engine):
        group = await _overtaken_while_generating(job_config, buf, engine,
                                                  Prompt("p0", {"prompt": "2+3=", "answer": "5"}, n_samples=4))
        assert agent.groups_abandoned == 1
        # The second attempt waited for the swap queued before it: generated on version 1 or 2,
        # both trainable at version 2 (whichever the agent had fetched when the batch ended).
        versions = {t.policy_version for t in group}
        assert len(versions) == 1 and versions <= {1, 2}, versions
        assert len(group) == 4 and {t.prompt_id for t in group} == {"p0"}


@pytest.mark.servers
async def test_with_abandoning_switched_off_the_stale_group_is_finished_and_published(job_config):
    cfg = job_config.model_copy(
        update={"rollout": job_config.rollout.model_copy(update={"abandon_stale_groups": False})}
    )
    async with agent_on_version_0(cfg, delay_s=2.0) as (buf, agent, engine):
        group = await _overtaken_while_generating(cfg, buf, engine,
                                                  Prompt("p2", {"prompt": "4+4=", "answer": "8"}, n_samples=2))
        assert agent.groups_abandoned == 0 and {t.policy_version for t in group} == {0}


@pytest.mark.servers
async def test_a_prompt_is_abandoned_a_bounded_number_of_times_then_runs_to_the_end(job_config):
    """An agent that cannot catch up (the announced weights never load) keeps dooming each
    attempt at once; after ABANDON_AT_MOST attempts the group is finished and published
    anyway, so the trainer sees it (and replaces it) instead of the prompt cycling forever."""
    cfg = job_config
    async with agent_on_version_0(cfg, delay_s=0.5) as (buf, agent, _):
        missing = f"s3://{cfg.weight_store.bucket}/{cfg.weight_prefix}/v00000007/manifest.json"
        await _announce(cfg, buf, 7, manifest=missing)  # announced, never loadable
        await wait_until("the agent heard of version 7", lambda: agent.trainer.version == 7)
        await buf.publish_prompts([Prompt("p1", {"prompt": "1+1=", "answer": "2"}, n_samples=2)])
        group = await _one_group(buf)
        assert agent.groups_abandoned == ABANDON_AT_MOST
        assert {t.policy_version for t in group} == {0} and len(group) == 2


@pytest.mark.servers
async def test_the_next_version_downloads_while_the_engine_loads_the_last(job_config):
    """A version announced while the engine loads the one before is fetched meanwhile, not
    after: its download overlaps the load (issue 15, part 3)."""
    store = weight_store(job_config)
    manifests = {v: (await asyncio.to_thread(publish_policy, store, seeded_model(v).state_dict(), TinyConfig().to_hf(),
                                             v,
                                             dtype="float32")).uri for v in (1, 2)}
    async with agent_on_version_0(job_config, delay_s=0.0, engine=SlowLoadingEngine()) as (buf, agent, engine):
        fetches = {}
        fetch_version = agent.fetch_version

        async def recorded(version):
            fetches[version] = time.monotonic()
            return await fetch_version(version)

        agent.fetch_version = recorded
        engine.load_s = 3.0
        await _announce(job_config, buf, 1, manifests[1])
        await wait_until("version 1 loading", lambda: engine.loading == 1)
        await _announce(job_config, buf, 2, manifests[2])
        await wait_until("version 2 loaded", lambda: engine.policy_version == 2)
    [(_, load_1_started, load_1_ended)] = [load for load in engine.loads if load[0] == 1]
    assert load_1_started < fetches[2] < load_1_ended, (fetches, engine.loads)
