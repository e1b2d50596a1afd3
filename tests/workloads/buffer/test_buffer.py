"""The JetStream buffer: pure parts, then against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import uuid

import nats.errors
import numpy as np
import pytest

from kuberl.operator.adapters.nats import NatsBridge
from kuberl.workloads.buffer.admin import BufferConfig
from kuberl.workloads.buffer.names import JobNames, job_token
from kuberl.workloads.buffer.records import (
    CodecError,
    PayloadTooLargeError,
    Prompt,
    Trajectory,
    decode_trajectory,
    encode_trajectory,
)
from kuberl.workloads.buffer.staleness import staleness_weight
from kuberl.workloads.buffer.stream import JobBuffer
from kuberl.workloads.trainer.feeder import InFlight, PromptFeeder

FAST = BufferConfig(trajectory_ack_wait_s=2.0, publish_retry_for_s=60.0)


def make_traj(i: int, n: int = 64, version: int = 0, group: str = "g0") -> Trajectory:
    rng = np.random.default_rng(i)
    mask = np.zeros(n, np.uint8)
    mask[n // 2 :] = 1
    return Trajectory(
        sample_id=f"s{i}", prompt_id=f"p{i // 4}", group_id=group, policy_version=version,
        tokens=rng.integers(0, 150_000, n), logprobs=-rng.random(n).astype(np.float32) * mask,
        loss_mask=mask, reward=float(i % 2), timing={"generate_s": 0.5},
    )


def job() -> tuple[str, str]:
    return "test-ns", f"job-{uuid.uuid4().hex[:8]}"


async def stored_trajectories(buf: JobBuffer) -> int:
    """Trajectories the stream still holds: work-queue retention keeps a message until its ack."""
    return (await buf.js.stream_info(buf.names.trajectories_stream)).state.messages


async def trajectories_left(buf: JobBuffer, expect: int, within_s: float = 5.0) -> int:
    """The trajectories stored once their count reaches ``expect`` (or what it is after ``within_s``).

    nats-server applies a work-queue ack to the stream on its own goroutine, after the
    connection has read it, so even a flushed (or double) ack shows in the stream's message
    count a moment later; the count is eventually exact, not exact at once.
    """
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        left = await stored_trajectories(buf)
        if left == expect or asyncio.get_running_loop().time() > deadline:
            return left
        await asyncio.sleep(0.02)


# ---- pure ---------------------------------------------------------------------------


def test_codec_round_trip_is_compact():
    t = make_traj(3, n=1000, version=7)
    data = encode_trajectory(t)
    assert len(data) < 9 * 1000 + 400  # 9 bytes a token plus a small header
    back = decode_trajectory(data)
    assert (back.sample_id, back.prompt_id, back.group_id, back.policy_version) == ("s3", "p0", "g0", 7)
    np.testing.assert_array_equal(back.tokens, t.tokens)
    np.testing.assert_array_equal(back.logprobs, t.logprobs)
    np.testing.assert_array_equal(back.loss_mask, t.loss_mask)
    assert back.reward == t.reward and back.timing == {"generate_s": 0.5}


def test_codec_rejects_garbage():
    with pytest.raises(CodecError):
        decode_trajectory(b"nope, not a trajectory")
    with pytest.raises(CodecError, match="expected"):
        decode_trajectory(encode_trajectory(make_traj(1))[:-3])


def test_trajectory_shapes_checked():
    with pytest.raises(ValueError, match="one length"):
        Trajectory("s", "p", "g", 0, tokens=[1, 2], logprobs=[0.0], loss_mask=[1, 1], reward=0)


def test_names_valid_and_injective():
    a = JobNames.for_job("a-b", "c")
    b = JobNames.for_job("a", "b-c")
    c = JobNames.for_job("ns", "x.y")
    assert len({a.prompts_stream, b.prompts_stream}) == 2
    assert "." not in c.prompts_stream and c.prompts_subject == "kuberl.ns_x_y.prompts"
    long = job_token("n" * 63, "x" * 253)
    assert len(long) <= 200 and long != job_token("n" * 63, "x" * 252 + "y")
    with pytest.raises(ValueError):
        job_token("ns", "bad name")


def test_staleness_policy():
    assert staleness_weight(5, 6, 1) == 1.0
    assert staleness_weight(4, 6, 1) is None
    assert staleness_weight(4, 6, 1, "downweight") == 0.5
    assert staleness_weight(2, 6, 1, "downweight", decay=0.5) == 0.125


def test_in_flight_tracker():
    f = InFlight(limit=2)
    f.issue(Prompt("a", {}), now=0.0)
    f.issue(Prompt("b", {}), now=5.0)
    assert f.capacity() == 0
    assert [p.prompt_id for p in f.overdue(now=8.0, timeout=4.0)] == ["a"]
    assert f.complete("a") and not f.complete("a")
    assert f.capacity() == 1


# ---- against nats-server ------------------------------------------------------------



@pytest.mark.servers
async def test_publish_fetch_ack_empties_the_stream(nats_server):
    buf = await JobBuffer.open(nats_server.url, *job(), FAST, create=True)
    try:
        acks = await buf.publish_trajectories(make_traj(i) for i in range(20))
        assert [a.seq for a in acks] == list(range(1, 21))
        consumer = await buf.trajectory_consumer()
        batch = await consumer.fetch(20, current_version=0, timeout=2)
        assert sorted(batch.sample_ids) == sorted(f"s{i}" for i in range(20))
        assert await stored_trajectories(buf) == 20  # nothing gone before the ack
        await batch.ack()
        assert await trajectories_left(buf, 0) == 0
        assert len(await consumer.fetch(5, current_version=0, timeout=0.5)) == 0
    finally:
        await buf.close()


@pytest.mark.servers
async def test_duplicate_publish_is_dropped_by_msg_id(nats_server):
    buf = await JobBuffer.open(nats_server.url, *job(), FAST, create=True)
    try:
        first = await buf.publish_trajectory(make_traj(1))
        again = await buf.publish_trajectory(make_traj(1))
        assert again.duplicate and again.seq == first.seq
        assert await stored_trajectories(buf) == 1
    finally:
        await buf.close()


@pytest.mark.servers
async def test_oversized_trajectory_is_refused_with_sizes(nats_server):
    buf = await JobBuffer.open(nats_server.url, *job(), FAST, create=True)
    try:
        huge = make_traj(0, n=1_000_000)  # 9 MB > the fixture's 8 MiB max_payload
        with pytest.raises(PayloadTooLargeError, match=r"s0 .*9000\d+ bytes.*max_payload of \d+ bytes"):
            await buf.publish_trajectory(huge)
    finally:
        await buf.close()


@pytest.mark.servers
async def test_stale_samples_dropped_or_downweighted_and_counted(nats_server):
    buf = await JobBuffer.open(nats_server.url, *job(), FAST, create=True)
    try:
        await buf.publish_trajectories(make_traj(v, version=v) for v in range(6))
        consumer = await buf.trajectory_consumer(max_off_policy_steps=2, staleness="drop")
        batch = await consumer.fetch(6, current_version=5, timeout=1)
        assert sorted(t.policy_version for t in batch) == [3, 4, 5]
        assert consumer.stats.stale_dropped == 3
        await batch.ack()  # the dropped ones are consumed too
        assert await trajectories_left(buf, 0) == 0

        await buf.publish_trajectories(make_traj(10 + v, version=v) for v in range(6))
        consumer.staleness = "downweight"
        batch = await consumer.fetch(6, current_version=5, timeout=1)
        weights = dict(zip((t.policy_version for t in batch), batch.weights, strict=True))
        assert weights == {0: 0.125, 1: 0.25, 2: 0.5, 3: 1.0, 4: 1.0, 5: 1.0}
        assert consumer.stats.stale_downweighted == 3
    finally:
        await buf.close()


@pytest.mark.servers
async def test_prompt_backpressure_bounds_in_flight(nats_server):
    cfg = BufferConfig(max_in_flight_prompts=4)
    buf = await JobBuffer.open(nats_server.url, *job(), cfg, create=True)
    try:
        feeder = PromptFeeder(buf, max_in_flight=6)
        issued = await feeder.feed(Prompt(f"p{i}", {"text": f"q{i}"}, n_samples=8) for i in range(10))
        assert len(issued) == 6 and feeder.capacity() == 0  # the feeder's bound
        consumer = await buf.prompt_consumer()
        leases = await consumer.fetch(10, timeout=0.5)
        assert len(leases) == 4  # the server's bound on prompts being worked on
        assert await consumer.fetch(1, timeout=0.3) == []
        for lease in leases[:2]:
            await lease.ack()
        more = await consumer.fetch(10, timeout=0.5)
        assert len(more) == 2
        assert feeder.complete("p0") and feeder.capacity() == 1
    finally:
        await buf.close()


def test_a_trainable_answered_prompt_stays_in_the_checkpointed_set_until_its_step():
    """Answered, its group waiting to be trained: a crash now must re-issue it (its
    trajectories are acked), so it is in `snapshot` until `settle`; a dropped one is not."""
    feeder = PromptFeeder(None, max_in_flight=4)
    for pid in ("kept", "dropped"):
        feeder.in_flight.issue(Prompt(pid, {"text": pid}), 0.0)
    assert feeder.complete("kept") and feeder.complete("dropped", trainable=False)
    assert "kept" not in feeder and feeder.capacity() == 4  # its slot is free for a new prompt
    assert [p.prompt_id for p in feeder.snapshot()] == ["kept"]
    feeder.settle(["kept"])
    assert feeder.snapshot() == []


@pytest.mark.servers
async def test_the_feeder_sees_a_broker_that_lost_acknowledged_prompts(fresh_nats_server, tmp_path):
    """nats-server SIGKILLed and restarted on an earlier copy of its store (an OS crash
    before fsync): the feeder notices, on its next publish (a sequence number acknowledged
    twice) or by reading the stream (it ends below what was acknowledged), and re-issues
    every prompt in flight at once."""
    server = fresh_nats_server
    buf = await JobBuffer.open(server.url, "test-ns", "rollback", FAST, create=True)
    try:
        feeder = PromptFeeder(buf, max_in_flight=20, reissue_after_s=3600, broker_check_s=3600)
        await feeder.feed(Prompt(f"early{i}", {"text": "q"}) for i in range(3))
        snapshot = await asyncio.to_thread(server.snapshot, tmp_path / "snap")
        await feeder.feed(Prompt(f"late{i}", {"text": "q"}) for i in range(5))  # acked, then lost
        await asyncio.to_thread(server.roll_back, snapshot)
        assert await feeder.check_broker() == []  # not seen yet: nothing published, the stream not read
        await feeder.feed([Prompt("after", {"text": "q"})])  # acked with a sequence handed out before
        again = await feeder.check_broker()
        assert sorted(p.prompt_id for p in again) == sorted([*(f"early{i}" for i in range(3)),
                                                             *(f"late{i}" for i in range(5)), "after"])
        assert all(p.attempt == 1 for p in again) and feeder.rollbacks == 1
        assert await feeder.check_broker() == []  # once

        # Nothing published after the rollback: the stream's last sequence gives it away.
        snapshot2 = await asyncio.to_thread(server.snapshot, tmp_path / "snap2")
        await feeder.feed(Prompt(f"later{i}", {"text": "q"}) for i in range(3))
        await asyncio.to_thread(server.roll_back, snapshot2)
        feeder.broker_check_s = 0
        again = await feeder.check_broker()
        assert len(again) == 12 and all(p.attempt >= 1 for p in again) and feeder.rollbacks == 2
    finally:
        await buf.close()


@pytest.mark.servers
async def test_job_state_compare_and_set(nats_server):
    buf = await JobBuffer.open(nats_server.url, *job(), FAST, create=True)
    try:
        state, rev = await buf.state.get()
        assert rev == 0 and state.policy_version == 0
        await asyncio.gather(*(buf.state.add_counters(steps=1) for _ in range(10)))
        await buf.state.publish_version(3, "s3://w/job/v00000003/manifest.json")
        await buf.state.publish_version(2, "s3://w/job/v00000002/manifest.json")  # never backwards
        state, _ = await buf.state.get()
        assert state.counters["steps"] == 10
        assert (state.policy_version, state.weights_manifest) == (3, "s3://w/job/v00000003/manifest.json")
    finally:
        await buf.close()


@pytest.mark.servers
async def test_rollout_agents_report_their_loaded_versions_beside_the_job_state(nats_server):
    """What RolloutPool status.policyVersions is made of: one key per agent, newest report
    wins, and the job-state document (one key of the same bucket) is untouched."""
    buf = await JobBuffer.open(nats_server.url, *job(), FAST, create=True)
    try:
        assert await buf.state.agent_versions() == {}
        await buf.state.publish_version(4, "s3://w/job/v00000004/manifest.json")
        await buf.state.report_agent("pool-abc-1", 3)
        await buf.state.report_agent("pool-abc-2", 4)
        await buf.state.report_agent("pool-abc-1", 4)
        assert await buf.state.agent_versions() == {"pool-abc-1": 4, "pool-abc-2": 4}
        # By name (what the operator asks for: the pool's ready pods), an agent that never reported left out.
        assert await buf.state.agent_versions(["pool-abc-2", "pool-abc-9"]) == {"pool-abc-2": 4}
        state, _ = await buf.state.get()
        assert state.policy_version == 4 and state.weights_manifest.endswith("v00000004/manifest.json")
    finally:
        await buf.close()


@pytest.mark.servers
async def test_following_the_job_state_sees_each_write_through_the_watch(nats_server):
    """A new version reaches a follower when it is written: the fallback read is set to a
    minute here, so only the KV watch can deliver within the test's wait."""
    import contextlib

    ns, name = job()
    buf = await JobBuffer.open(nats_server.url, ns, name, FAST, create=True)
    writer = await JobBuffer.open(nats_server.url, ns, name, FAST, create=True)  # the trainer's own connection
    try:
        async with contextlib.aclosing(buf.state.follow(fallback_s=60)) as states:
            first = await asyncio.wait_for(anext(states), timeout=10)  # nothing written yet: read
            assert first.weights_manifest is None
            for version in (1, 2):
                await writer.state.publish_version(version, f"s3://w/job/v{version:08d}/manifest.json")
                seen = await asyncio.wait_for(anext(states), timeout=10)
                while seen.policy_version < version:  # the watch's caught-up marker comes as a read
                    seen = await asyncio.wait_for(anext(states), timeout=10)
                assert (seen.policy_version, seen.weights_manifest) == (version, f"s3://w/job/v{version:08d}/manifest.json")
    finally:
        await writer.close()
        await buf.close()


@pytest.mark.servers
async def test_delete_job_removes_streams_and_kv(nats_server):
    ns, name = job()
    buf = await JobBuffer.open(nats_server.url, ns, name, FAST, create=True)
    await buf.close()
    bridge = NatsBridge()  # the operator's finaliser path: synchronous, its own loop thread
    try:
        deleted = bridge.delete_job(nats_server.url, ns, name)
        assert sorted(deleted) == sorted(JobNames.for_job(ns, name).streams())
        assert bridge.delete_job(nats_server.url, ns, name) == []  # idempotent
    finally:
        bridge.close()


class _FailingSecondFetch:
    """A real pull subscription whose second `fetch` raises ``error`` (the first delivers)."""

    def __init__(self, sub, error: BaseException):
        self._sub, self._error, self.calls = sub, error, 0

    async def fetch(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 2:
            raise self._error
        return await self._sub.fetch(*args, **kwargs)


@pytest.mark.servers
async def test_bare_asyncio_timeout_after_messages_arrived_returns_them(nats_server):
    """nats-py 2.16 can end a pull fetch with a bare asyncio.TimeoutError (not nats'
    TimeoutError). Raised on the second round of a batch, it must end the batch with what
    arrived — not escape and leave those samples pending, never to be trained."""
    assert not issubclass(asyncio.TimeoutError, nats.errors.TimeoutError)  # what made it slip through
    buf = await JobBuffer.open(nats_server.url, *job(), FAST, create=True)
    try:
        await buf.publish_trajectories(make_traj(i) for i in range(5))
        consumer = await buf.trajectory_consumer()
        consumer._sub = _FailingSecondFetch(consumer._sub, asyncio.TimeoutError())  # noqa: UP041 - nats-py raises this name
        batch = await consumer.fetch(10, current_version=0, timeout=3)  # asks for more than there is
        assert consumer._sub.calls == 2
        assert sorted(batch.sample_ids) == [f"s{i}" for i in range(5)]
        await batch.ack()
        assert consumer._pending == {} and await trajectories_left(buf, 0) == 0

        prompts = await buf.prompt_consumer()
        prompts._sub = _FailingSecondFetch(prompts._sub, asyncio.TimeoutError())  # noqa: UP041
        assert await prompts.fetch(1, timeout=0.2) == []  # first call: a real, empty fetch
        assert await prompts.fetch(1, timeout=0.2) == []  # second: the bare timeout, swallowed
    finally:
        await buf.close()


@pytest.mark.servers
async def test_failed_fetch_after_messages_arrived_leaves_nothing_pending(nats_server):
    """An error mid-batch that is not the broker away (buffer.broker_away) propagates, but the
    samples already fetched are given back and trained by a later fetch (before the fix their
    redelivery was taken for a copy of a pending sample and skipped forever)."""
    buf = await JobBuffer.open(nats_server.url, *job(), FAST, create=True)
    try:
        await buf.publish_trajectories(make_traj(i) for i in range(5))
        consumer = await buf.trajectory_consumer()
        real = consumer._sub
        consumer._sub = _FailingSecondFetch(real, nats.errors.ConnectionClosedError())
        with pytest.raises(nats.errors.ConnectionClosedError):
            await consumer.fetch(10, current_version=0, timeout=3)
        assert consumer._pending == {}
        consumer._sub = real
        batch = await consumer.fetch(10, current_version=0, timeout=1.5)  # nak'd: back at once
        assert sorted(batch.sample_ids) == [f"s{i}" for i in range(5)]
        await batch.ack()
        assert await trajectories_left(buf, 0) == 0
    finally:
        await buf.close()


@pytest.mark.servers
async def test_the_broker_going_away_mid_batch_ends_the_batch_with_what_arrived(nats_server):
    buf = await JobBuffer.open(nats_server.url, *job(), FAST, create=True)
    try:
        await buf.publish_trajectories(make_traj(i) for i in range(5))
        consumer = await buf.trajectory_consumer()
        consumer._sub = _FailingSecondFetch(consumer._sub, nats.errors.ConnectionReconnectingError())
        batch = await consumer.fetch(10, current_version=0, timeout=1.0)  # waits out its deadline, no raise
        assert sorted(batch.sample_ids) == [f"s{i}" for i in range(5)]
        await batch.ack()
        assert await trajectories_left(buf, 0) == 0
    finally:
        await buf.close()


@pytest.mark.servers
async def test_short_fetches_on_an_empty_stream_never_raise(nats_server):
    """Deadlines that expire around nats-py's no-wait probe end in one timeout flavour or the
    other; every flavour means "nothing", never an exception out of the consumers."""
    buf = await JobBuffer.open(nats_server.url, *job(), FAST, create=True)
    try:
        consumer = await buf.trajectory_consumer()
        prompts = await buf.prompt_consumer()
        for i in range(40):
            timeout = 0.011 + 0.0005 * i
            assert len(await consumer.fetch(8, current_version=0, timeout=timeout)) == 0
            assert await prompts.fetch(4, timeout=timeout) == []
    finally:
        await buf.close()


_CRASHING_TRAINER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from kuberl.workloads.buffer.admin import BufferConfig
    from kuberl.workloads.buffer.stream import JobBuffer

    async def main(url, ns, name):
        buf = await JobBuffer.open(url, ns, name, BufferConfig(trajectory_ack_wait_s=2.0), create=True)
        consumer = await buf.trajectory_consumer()
        batch = await consumer.fetch(10, current_version=0, timeout=5)
        print(json.dumps(batch.sample_ids), flush=True)
        time.sleep(3600)  # "training"; killed before the ack

    asyncio.run(main(*sys.argv[1:]))
    """
)


@pytest.mark.servers
async def test_consumer_killed_before_ack_gets_redelivered_and_nothing_trains_twice(nats_server):
    ns, name = job()
    buf = await JobBuffer.open(nats_server.url, ns, name, FAST, create=True)
    try:
        await buf.publish_trajectories(make_traj(i) for i in range(30))
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _CRASHING_TRAINER, nats_server.url, ns, name,
                                                    stdout=asyncio.subprocess.PIPE)
        try:
            in_flight = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        finally:
            proc.kill()  # SIGKILL: no chance to ack or clean up
            await proc.wait()
        assert len(in_flight) == 10

        consumer = await buf.trajectory_consumer()
        trained: list[str] = []
        redelivered = set()
        while len(trained) < 30:
            batch = await consumer.fetch(8, current_version=0, timeout=6)  # > ack_wait: the dead one's come back
            assert len(batch), f"stalled after {len(trained)}"
            redelivered |= {m.data and decode_trajectory(m.data).sample_id for m in batch._msgs
                            if m.metadata.num_delivered > 1}
            trained += batch.sample_ids  # the "optimizer step"
            await batch.ack()
        assert sorted(trained) == sorted(f"s{i}" for i in range(30))  # all, each once
        assert redelivered == set(in_flight)

        # Crash *after* the step committed but before the ack landed: the checkpointed
        # seen-set makes the redelivered copies duplicates, not training data.
        await buf.publish_trajectories(make_traj(i) for i in range(100, 110))
        batch = await consumer.fetch(10, current_version=0, timeout=2)
        checkpoint = consumer.state_dict() | {"committed": consumer.state_dict()["committed"] + batch.sample_ids}
        restarted = await buf.trajectory_consumer()  # batch never acked
        restarted.load_state_dict(checkpoint)
        dups_before = restarted.stats.duplicates
        again = await restarted.fetch(10, current_version=0, timeout=4)
        # Each of the 10 is recognised (more copies when the 2 s ack wait lapses again within the 4 s fetch).
        assert len(again) == 0 and restarted.stats.duplicates - dups_before >= 10
        await again.ack()
        assert await trajectories_left(buf, 0) == 0
    finally:
        await buf.close()
