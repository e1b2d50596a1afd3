"""Decoupled (asynchronous) mode: feed prompts, consume trajectories, step, publish weights."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict

import aiohttp

from kuberl.workloads.buffer.records import Prompt
from kuberl.workloads.buffer.staleness import staleness_rule, staleness_weight
from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.logs import get_logger
from kuberl.workloads.rollout.episodes import env_session_timeout
from kuberl.workloads.trainer.feeder import PromptFeeder
from kuberl.workloads.trainer.groups import GroupAssembler, in_flight_target
from kuberl.workloads.trainer.trainer import Trainer

log = get_logger(__name__)


PROMPT_REISSUE_S = float(os.environ.get("KUBERL_PROMPT_REISSUE_S", "60"))


async def run_decoupled(cfg: WorkloadConfig) -> None:
    tr = Trainer(cfg)
    extra = tr.restore_or_init()
    await tr.open_buffer()
    buf = tr.buffer
    # Versions only move forward: after a crash, agents may hold weights newer than the checkpoint.
    kv_state, _ = await buf.state.get()
    if extra or kv_state.weights_manifest:
        tr.progress.version = max(tr.progress.version, kv_state.policy_version) + 1
    published = await asyncio.to_thread(tr.publish)
    await buf.state.publish_version(tr.progress.version, published.uri)
    # Staleness is decided here, per sample, so a dropped group's prompt can be replaced at once.
    consumer = await buf.trajectory_consumer(max_off_policy_steps=10**9)
    if extra.get("consumer"):
        consumer.load_state_dict(extra["consumer"])
    assembler = GroupAssembler(cfg.algorithm.dynamic_sampling, answered=set(extra.get("answered", [])))
    feeder = PromptFeeder(buf, cfg.buffer.max_in_flight_prompts, reissue_after_s=PROMPT_REISSUE_S)
    feeder.restore(Prompt(**raw) for raw in extra.get("in_flight", []))
    unacked = []
    stale_dropped = 0
    rule = staleness_rule(cfg.algorithm.off_policy_correction.staleness)
    round_size = cfg.algorithm.rollout_batch_size
    session = aiohttp.ClientSession(timeout=env_session_timeout(cfg)) if cfg.reward.type == "agentEnv" and tr.evaluator.enabled else None
    tr._rl_t0 = time.monotonic()
    waiting_since = time.monotonic()  # the trainer waits for trajectories from here to its next step
    try:
        while tr.progress.step < cfg.run_policy.max_steps:
            stage = tr.progress.curriculum.stage
            target = in_flight_target(cfg, tr.prompts.group_size(stage), assembler.keep_rate)
            # Groups assembled but not yet trained count against the budget too: they age as well.
            want = target - len(feeder) - len(assembler.ready)
            if want > 0:
                await feeder.feed(tr.prompts.take(want, stage))
            await feeder.reissue_overdue()
            batch = await consumer.fetch(256, current_version=tr.progress.version, timeout=0.2)
            unacked.append(batch)  # includes duplicates and stale samples: done with at the next ack
            for t in batch.trajectories:
                if staleness_weight(t.policy_version, tr.progress.version, cfg.max_off_policy_steps, **rule) is None:
                    stale_dropped += 1
                    # The prompt's group is lost for training: count it answered so a fresh prompt replaces it.
                    if feeder.complete(t.prompt_id):
                        assembler.answered.add(t.prompt_id)
                    continue
                done = assembler.add(t)
                if done is not None:
                    feeder.complete(done)
            stale_dropped += assembler.drop_untrainable(tr.progress.version, cfg.max_off_policy_steps, rule)
            if assembler.ready_samples() < round_size:
                continue
            step_start = time.monotonic()
            waited = step_start - waiting_since
            groups = assembler.take(round_size)
            step_before = tr.progress.step
            # Staleness weights are set in train_round, against the version the batch trains from.
            rows = await asyncio.to_thread(tr.train_round, groups)
            for row in rows:
                row["stale_dropped"] = stale_dropped
                row["in_flight"] = len(feeder)
            sync_s = 0.0
            if tr.crossed(step_before, cfg.weight_store.sync_interval_steps):
                published = await asyncio.to_thread(tr.publish)
                await buf.state.publish_version(tr.progress.version, published.uri)
                await asyncio.to_thread(tr.store.prune, cfg.weight_store.keep_versions)
                sync_s = published.seconds
                rows[-1]["weight_sync_bytes"] = published.bytes
            if tr.evaluator.enabled and tr.crossed(step_before, cfg.evaluation.interval_steps):
                engine = tr.evaluation_engine()
                try:
                    rows[-1].update(await tr.evaluate(engine, session))
                finally:
                    await engine.stop()
            if tr.crossed(step_before, cfg.checkpoint.interval_steps):
                await asyncio.to_thread(tr.checkpoint, {
                    "consumer": consumer.state_dict(), "answered": sorted(assembler.answered)[-10000:],
                    "in_flight": [asdict(p) for p in feeder.snapshot()],
                })
            # Ack only after the step (and its checkpoint) are committed: a crash before redelivers.
            for b in unacked:
                await b.ack()
            unacked = []
            waiting_since = time.monotonic()
            busy = waiting_since - step_start
            for row in rows:
                row["trainer_idle_percent"] = round(100.0 * waited / max(waited + busy, 1e-9), 2)
                # The round's wait and weight sync, shared by the steps trained from it.
                row["time_wait_s"] = round(waited / len(rows), 4)
                row["time_weight_sync_s"] = round(sync_s / len(rows), 4)
                await tr.report(row)
    finally:
        tr.close()
        if session is not None:
            await session.close()
        await buf.close()
