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
    ledger = tr.ledger
    ledger.record("start", restored_step=tr.progress.step)
    # Out at once: an incarnation killed before its first checkpoint still counts as a restart.
    await asyncio.to_thread(tr.mirror_ledger)
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
    # Only prompts in the feeder's set are wanted (`PromptFeeder.__contains__`): that, not a
    # remembered answered-set, keeps a group from being trained twice across restarts.
    assembler = GroupAssembler(cfg.algorithm.dynamic_sampling)
    feeder = PromptFeeder(buf, cfg.buffer.max_in_flight_prompts, reissue_after_s=PROMPT_REISSUE_S)
    feeder.restore(Prompt(**raw) for raw in extra.get("in_flight", []))
    unacked = []
    stale_dropped = 0
    rollbacks_recorded = 0
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
                if issued := await feeder.feed(tr.prompts.take(want, stage)):
                    ledger.record("issued", prompts=[p.prompt_id for p in issued])
            for again in (await feeder.reissue_overdue(), await feeder.check_broker()):
                if again:
                    ledger.record("issued", prompts=[p.prompt_id for p in again], reissue=True)
            if feeder.rollbacks > rollbacks_recorded:
                rollbacks_recorded = feeder.rollbacks
                ledger.record("broker_rollback")
                await tr.reassert_state()
            batch = await consumer.fetch(256, current_version=tr.progress.version, timeout=0.2)
            unacked.append(batch)  # includes duplicates and stale samples: done with at the next ack
            orphans = 0
            for t in batch.trajectories:
                stale = staleness_weight(t.policy_version, tr.progress.version, cfg.max_off_policy_steps, **rule) is None
                stale_dropped += stale
                if t.prompt_id not in feeder:
                    # Answered already, or issued by a trainer that crashed before its checkpoint
                    # (its prompt counter was rolled back: the same problems are issued again).
                    orphans += not stale
                    continue
                if stale:
                    # The prompt's group is lost for training: out of the feeder's set, so a fresh
                    # prompt takes its slot and its later samples are ignored as orphans.
                    feeder.complete(t.prompt_id, trainable=False)
                    ledger.record("dropped", prompt=t.prompt_id, why="stale")
                    continue
                done = assembler.add(t)
                if done is not None:
                    feeder.complete(done, trainable=not assembler.last_dropped)
                    if assembler.last_dropped:
                        ledger.record("dropped", prompt=done, why="no_signal")
            if orphans:
                ledger.record("orphans", count=orphans)
            for group in assembler.drop_untrainable(tr.progress.version, cfg.max_off_policy_steps, rule):
                stale_dropped += len(group)
                feeder.settle([group[0].prompt_id])
                ledger.record("dropped", prompt=group[0].prompt_id, why="stale")
            if assembler.ready_samples() < round_size:
                continue
            step_start = time.monotonic()
            waited = step_start - waiting_since
            groups = assembler.take(round_size)
            step_before = tr.progress.step
            # Staleness weights are set in train_round, against the version the batch trains from.
            rows = await asyncio.to_thread(tr.train_round, groups)
            trained = [g[0].prompt_id for g in groups]
            feeder.settle(trained)
            for row in rows:  # the round's groups are recorded with its last step
                ledger.record("step", step=row["step"], prompts=trained if row is rows[-1] else [],
                              reward_mean=row["reward_mean"])
            for row in rows:
                row["stale_dropped"] = stale_dropped
                row["in_flight"] = len(feeder)
            sync_s = 0.0
            if tr.crossed(step_before, cfg.weight_store.sync_interval_steps):
                published = await asyncio.to_thread(tr.publish)
                await buf.state.publish_version(tr.progress.version, published.uri)
                await asyncio.to_thread(tr.prune_versions)
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
                    "consumer": consumer.state_dict(), "in_flight": [asdict(p) for p in feeder.snapshot()],
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
        ledger.record("end", step=tr.progress.step, in_flight=[p.prompt_id for p in feeder.snapshot()])
        await asyncio.to_thread(tr.mirror_ledger)
    finally:
        tr.close()
        if session is not None:
            await session.close()
        await buf.close()
