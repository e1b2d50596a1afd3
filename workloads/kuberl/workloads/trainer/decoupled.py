"""Decoupled (asynchronous) mode: feed prompts, consume trajectories, step, publish weights.

Where the rounds come from (feeding the agents, fetching, dropping stale samples,
assembling groups) is trainer.rounds; what follows a round (publish, evaluate, checkpoint)
is `Trainer.after_round`, in the same order as in colocated mode."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.logs import get_logger
from kuberl.workloads.episodes.generate import env_session_timeout
from kuberl.workloads.trainer.rounds import Rounds
from kuberl.workloads.trainer.trainer import Trainer

log = get_logger(__name__)


async def run_decoupled(cfg: WorkloadConfig) -> None:
    tr = Trainer(cfg)
    extra = tr.restore_or_init()
    session = (
        aiohttp.ClientSession(timeout=env_session_timeout(cfg))
        if cfg.reward.type == "agentEnv" and tr.evaluator.enabled
        else None
    )
    try:
        rounds = await _begin(tr, extra)
        while tr.progress.step < cfg.run_policy.max_steps:
            await rounds.feed()
            await rounds.fetch()
            if not rounds.ready():
                continue
            groups, waited = rounds.assemble()
            started, step_before = time.monotonic(), tr.progress.step
            rows = await asyncio.to_thread(tr.train, groups)
            rounds.trained(groups, rows)
            sync_s = await tr.after_round(rows, step_before, lambda: _evaluate(tr, session), rounds.checkpoint_state)
            await rounds.ack()
            rounds.annotate(rows, waited, time.monotonic() - started, sync_s)
            for row in rows:
                await tr.report(row)
        tr.ledger.record("end", step=tr.progress.step, in_flight=[p.prompt_id for p in rounds.feeder.snapshot()])
        await asyncio.to_thread(tr.mirror_ledger)
    finally:
        tr.close()
        if session is not None:
            await session.close()
        if tr.buffer is not None:
            await tr.buffer.close()


async def _begin(tr: Trainer, extra: dict) -> Rounds:
    """The start of an incarnation: announced in the ledger, the buffer opened, the current
    weights published as a version newer than any the agents may hold."""
    tr.ledger.record("start", restored_step=tr.progress.step)
    # Out at once: an incarnation killed before its first checkpoint still counts as a restart.
    await asyncio.to_thread(tr.mirror_ledger)
    await tr.open_buffer()
    # Versions only move forward: after a crash, agents may hold weights newer than the checkpoint.
    kv_state, _ = await tr.buffer.state.get()
    if extra or kv_state.weights_manifest:
        tr.progress.version = max(tr.progress.version, kv_state.policy_version) + 1
    await tr.sync_weights()
    # Staleness is decided per sample (trainer.rounds), so a dropped group's prompt can be replaced at once.
    consumer = await tr.buffer.trajectory_consumer(max_off_policy_steps=10**9)
    rounds = Rounds(tr, consumer, extra)
    tr._rl_t0 = time.monotonic()
    return rounds


async def _evaluate(tr: Trainer, session) -> dict:
    """On an in-process engine holding a copy of the weights: the pool keeps generating meanwhile."""
    engine = tr.evaluation_engine()
    try:
        return await tr.evaluate(engine, session)
    finally:
        await engine.stop()
