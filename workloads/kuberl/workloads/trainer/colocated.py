"""Colocated (synchronous) mode: generate a rollout batch, train on it, update the engine in
place; what follows a round (publish every weightStore.syncIntervalSteps, evaluate,
checkpoint) is `Trainer.after_round`, in the same order as in decoupled mode."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import aiohttp

from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.observe.step_row import StepRow, share_round
from kuberl.workloads.rl.sampling import group_has_signal
from kuberl.workloads.episodes.generate import env_session_timeout, run_group
from kuberl.workloads.trainer.colocated_engine import ColocatedEngine
from kuberl.workloads.trainer.trainer import Trainer, stats


async def run_colocated(cfg: WorkloadConfig) -> None:
    tr = Trainer(cfg)
    tr.restore_or_init()
    await tr.open_buffer()
    engine = await ColocatedEngine.start(cfg, tr)
    session = aiohttp.ClientSession(timeout=env_session_timeout(cfg)) if cfg.reward.type == "agentEnv" else None
    tr._rl_t0 = time.monotonic()
    try:
        # The untrained policy's score: reported with the first step's row, the curve's origin.
        baseline = await tr.evaluate(engine.batcher, session) if tr.evaluator.enabled and tr.progress.step == 0 else {}
        while tr.progress.step < cfg.run_policy.max_steps:
            groups, generated = await _generate(tr, engine, session)
            step_before = tr.progress.step
            await engine.before_training()
            rows = await asyncio.to_thread(tr.train, groups)
            update_s = await _update_engine(tr, engine)
            if baseline:
                rows[0].add_evaluation(baseline)
                baseline = {}
            sync_s = await tr.after_round(rows, step_before, lambda: tr.evaluate(engine.batcher, session))
            generated.annotate(rows, update_s + sync_s)
            for row in rows:
                await tr.report(row)
        if tr.last_published is None or tr.last_published.version != tr.progress.version:
            await tr.sync_weights()  # a job restored at its last step still ends with its weights published
    finally:
        tr.close()
        await engine.close()
        if session is not None:
            await session.close()
        if tr.buffer is not None:
            await tr.buffer.close()


@dataclass(frozen=True)
class Generated:
    """What generating a round's rollout batch measured."""

    reward_mean: float  # over every sample generated, those dynamic sampling left out included
    seconds: float

    def annotate(self, rows: list[StepRow], sync_s: float) -> None:
        for row in rows:
            row.rollout_reward_mean = round(self.reward_mean, 4)
        share_round(rows, time_generate_s=self.seconds, time_weight_sync_s=sync_s)


async def _generate(tr: Trainer, engine: ColocatedEngine, session) -> tuple[list, Generated]:
    """One rollout batch from the current policy (on-policy), and the groups to train on."""
    cfg, stage = tr.cfg, tr.progress.curriculum.stage
    n_prompts = max(1, cfg.algorithm.rollout_batch_size // tr.prompts.group_size(stage))
    if cfg.algorithm.dynamic_sampling:
        n_prompts = math.ceil(n_prompts * cfg.algorithm.over_sampling_factor)
    prompts = tr.prompts.take(n_prompts, stage)
    t0 = time.monotonic()
    groups = await asyncio.gather(*(run_group(engine.batcher, p, cfg.reward, tr.prompts.sampling(stage), tr.tokenizer,
                                              session,
                                              cfg.agent_envs) for p in prompts))
    generated = Generated(stats([t.reward for g in groups for t in g])[0], time.monotonic() - t0)
    if cfg.algorithm.dynamic_sampling:
        kept = [g for g in groups if group_has_signal(g)]
        # Over-sampled: train on at most one rollout batch of the groups with a signal.
        groups = _fill(kept, cfg.algorithm.rollout_batch_size) or groups[:1]
    return groups, generated


async def _update_engine(tr: Trainer, engine: ColocatedEngine) -> float:
    """"Update engine weights in place": the trained tensors go straight into the engine."""
    t0 = time.monotonic()
    await engine.update(await asyncio.to_thread(tr.backend.hf_state), tr.progress.version)
    return time.monotonic() - t0


def _fill(groups: list, max_samples: int) -> list:
    """Whole groups, in order, up to ``max_samples`` samples."""
    out, n = [], 0
    for g in groups:
        if out and n + len(g) > max_samples:
            break
        out.append(g)
        n += len(g)
    return out
