"""The job's buffer as the operator and the trainer share it, through the code each runs.

* Streams: the operator creates them from spec.buffer; the trainer opening the buffer
  must leave those settings as they are (it used to re-apply its own, unbounded ones).
* Job state: a step row the trainer reports reaches the operator's status (reward) and
  its autoscaler (the trainerIdle signal), read through the one JobState schema.
"""

from __future__ import annotations

import time

import pytest

from kuberl.operator.adapters.nats import NatsBridge
from kuberl.operator.controllers.rolloutpool import read_signals
from kuberl.operator.controllers.runtime import RT
from kuberl.operator.decisions import autoscaler
from kuberl.operator.decisions import status as st
from kuberl.workloads.buffer.admin import BufferConfig
from kuberl.workloads.observe.step_row import StepRow
from kuberl.workloads.buffer.names import JobNames
from kuberl.workloads.trainer.trainer import Trainer
from tests.support.objects import example_spec, workload_config_for

MAX_STREAM_BYTES = 64 * 1024**2


@pytest.fixture
def trainer_and_bridge(nats_server, tmp_path):
    spec = example_spec("tiny-cpu.yaml")
    spec["buffer"] = {"maxStreamBytes": MAX_STREAM_BYTES, "maxInFlightPrompts": 40}
    name = f"contract-{time.monotonic_ns() % 10**8}"
    cfg = workload_config_for(spec, name, nats_url=nats_server.url, s3_endpoint="http://127.0.0.1:1",
                              output_dir=str(tmp_path))
    bridge = NatsBridge()
    bridge.ensure_job(nats_server.url, "default", name,
                      BufferConfig.from_spec(cfg.buffer))  # what the RLJob controller does
    yield Trainer(cfg), bridge
    bridge.close()


@pytest.mark.servers
async def test_a_process_opening_the_buffer_keeps_the_operators_stream_settings(trainer_and_bridge):
    tr, _ = trainer_and_bridge
    await tr.open_buffer()
    try:
        info = await tr.buffer.js.stream_info(JobNames.for_job("default", tr.cfg.job.name).trajectories_stream)
        assert info.config.max_bytes == MAX_STREAM_BYTES
    finally:
        await tr.buffer.close()


@pytest.mark.servers
async def test_a_trainer_step_reaches_status_reward_and_the_trainer_idle_autoscaler(trainer_and_bridge):
    tr, bridge = trainer_and_bridge
    await tr.open_buffer()
    try:
        row = StepRow(step=3, policy_version=3, reward_mean=0.625, reward_std=0.25, pass_rate=0.5, samples_trained=384,
                      samples_per_s=12.5, stage=0, trainer_idle_percent=80.0, infra_failed_total=7)
        await tr.report(row)
    finally:
        await tr.buffer.close()
    name = tr.cfg.job.name
    state = bridge.job_state(tr.cfg.buffer.url, "default", name)  # what the operator reads
    out, _ = st.progress(state, max_steps=10, previous=None, now=time.time())
    assert out["step"] == 3 and out["reward"] == {"mean": "0.625", "std": "0.25", "passRate": "0.5"}
    assert out["infraFailedSamples"] == 7  # samples masked because they could not be scored

    job_body = {"metadata": {"name": name}, "spec": {"buffer": {"url": tr.cfg.buffer.url}}}
    try:
        signals = read_signals(job_body, "default")  # through the operator's runtime NATS bridge
    finally:
        RT.nats.close()
        RT._nats = None
    assert signals.trainer_idle_percent == 80.0
    policy = autoscaler.Policy(min_replicas=1, max_replicas=8, signal="trainerIdle", target=20.0)
    decision = autoscaler.decide(2, signals, policy, last_scale_time=None, now=0.0)
    assert decision.reason == "ScaledUp" and decision.replicas == 6  # 2 replicas x 80% idle / 20% target, step cap 4
