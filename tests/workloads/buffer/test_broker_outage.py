"""The buffer's clients wait out a broker outage instead of raising (buffer.broker_away).

The trainer loops on a trajectory fetch and acks after each step; a rollout agent loops on
a prompt fetch and follows the job state. Any of them raising while NATS was away crashed
the process, and it was restarted (a fresh engine, a weight load, a checkpoint restore) for
an outage it only had to wait out.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import pytest

from kuberl.workloads.buffer.admin import BufferConfig
from kuberl.workloads.buffer.records import Prompt
from kuberl.workloads.buffer.stream import JobBuffer
from tests.workloads.buffer.test_buffer import FAST, make_traj

pytestmark = pytest.mark.servers

# Longer than a NATS request's timeout (5 s): a read made when the broker left fails, not waits.
OUTAGE_S = 7.0


async def test_the_prompt_fetch_and_the_state_follow_wait_out_a_broker_outage(fresh_nats_server):
    server = fresh_nats_server
    buf = await JobBuffer.open(server.url, "test-ns", "outage", BufferConfig(publish_retry_for_s=60.0), create=True)
    followed: list[int] = []

    async def follow() -> None:
        async with contextlib.aclosing(buf.state.follow(fallback_s=0.5)) as states:
            async for state in states:
                followed.append(state.policy_version)
                if state.policy_version == 2:
                    return

    follower = None
    try:
        await buf.state.publish_version(1, "s3://weights/v1")
        prompts = await buf.prompt_consumer()
        follower = asyncio.create_task(follow())
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.stop, signal.SIGKILL)
        # The trainer's announcement of a version, made while the broker is away.
        writer = asyncio.create_task(buf.state.publish_version(2, "s3://weights/v2"))
        away_until = time.monotonic() + OUTAGE_S
        while time.monotonic() < away_until:
            assert await prompts.fetch(1, timeout=0.5) == []
            assert not follower.done(), follower.exception()
            assert not writer.done(), writer.exception()
        await asyncio.to_thread(server.start)
        await asyncio.wait_for(writer, 30)
        await asyncio.wait_for(follower, 30)
        assert followed[0] == 1 and followed[-1] == 2
        await buf.publish_prompts([Prompt("p0", {"text": "1+1="}, n_samples=1)])
        leases = []
        while not leases:
            leases = await asyncio.wait_for(prompts.fetch(1, timeout=1.0), 30)
        assert [lease.prompt.prompt_id for lease in leases] == ["p0"]
    finally:
        if follower is not None:
            follower.cancel()
        await buf.close()


async def test_nats_restart_mid_stream_loses_nothing(fresh_nats_server):
    server = fresh_nats_server
    total = 600
    pub = await JobBuffer.open(server.url, *("test-ns", "restart"), FAST, create=True)
    sub = await JobBuffer.open(server.url, *("test-ns", "restart"), FAST, create=True)
    trained: list[str] = []
    try:
        consumer = await sub.trajectory_consumer()

        async def produce():
            for start in range(0, total, 20):
                await pub.publish_trajectories(make_traj(i, n=256) for i in range(start, start + 20))
                if start == 200:
                    # SIGKILL: no graceful flush; acked messages must still be on disk.
                    await asyncio.to_thread(server.restart, signal.SIGKILL, 0.5)

        async def consume():
            # As the trainer does: neither the fetch nor the ack may raise while the server
            # is down (kuberl.workloads.buffer.broker_away): a trainer would crash on it.
            while len(trained) < total:
                batch = await consumer.fetch(32, current_version=0, timeout=2)
                trained.extend(batch.sample_ids)
                await batch.ack()  # an ack lost to the outage: redelivered, dropped as a duplicate

        await asyncio.wait_for(asyncio.gather(produce(), consume()), timeout=180)
        assert sorted(trained) == sorted(f"s{i}" for i in range(total))
        assert len(trained) == total
    finally:
        await pub.close()
        await sub.close()
