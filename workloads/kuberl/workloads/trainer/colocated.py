"""Colocated (synchronous) mode: generate a rollout batch, train on it, update the engine in place."""

from __future__ import annotations

import asyncio
import math
import time

import aiohttp

from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.rl.sampling import group_has_signal
from kuberl.workloads.rollout.episodes import env_session_timeout, run_group
from kuberl.workloads.trainer.colocated_engine import ColocatedEngine
from kuberl.workloads.trainer.trainer import Trainer, stats


async def run_colocated(cfg: WorkloadConfig) -> None:
    tr = Trainer(cfg)
    tr.restore_or_init()
    await tr.open_buffer()
    engine = await ColocatedEngine.start(cfg, tr)
    batcher = engine.batcher
    session = aiohttp.ClientSession(timeout=env_session_timeout(cfg)) if cfg.reward.type == "agentEnv" else None
    tr._rl_t0 = time.monotonic()
    try:
        # The untrained policy's score: reported with the first step's row, the curve's origin.
        baseline = await tr.evaluate(batcher, session) if tr.evaluator.enabled and tr.progress.step == 0 else {}
        while tr.progress.step < cfg.run_policy.max_steps:
            stage = tr.progress.curriculum.stage
            group = tr.prompts.group_size(stage)
            n_prompts = max(1, cfg.algorithm.rollout_batch_size // group)
            if cfg.algorithm.dynamic_sampling:
                n_prompts = math.ceil(n_prompts * cfg.algorithm.over_sampling_factor)
            prompts = tr.prompts.take(n_prompts, stage)
            # Generate the whole rollout batch (on-policy), then train on it.
            t0 = time.monotonic()
            groups = await asyncio.gather(*(run_group(batcher, p, cfg.reward, tr.prompts.sampling(stage), tr.tokenizer, session, cfg.agent_envs) for p in prompts))
            generate_s = time.monotonic() - t0
            all_rewards = [t.reward for g in groups for t in g]
            if cfg.algorithm.dynamic_sampling:
                kept = [g for g in groups if group_has_signal(g)]
                # Over-sampled: train on at most one rollout batch of the groups with a signal.
                groups = _fill(kept, cfg.algorithm.rollout_batch_size) or groups[:1]
            step_before = tr.progress.step
            await engine.before_training()
            rows = await asyncio.to_thread(tr.train_round, groups)
            # "Update engine weights in place": the trained tensors go straight into the engine.
            t0 = time.monotonic()
            await engine.update(await asyncio.to_thread(tr.backend.hf_state), tr.progress.version)
            sync_s = time.monotonic() - t0
            if baseline:
                rows[0].update(baseline)
                baseline = {}
            if tr.evaluator.enabled and tr.crossed(step_before, cfg.evaluation.interval_steps):
                rows[-1].update(await tr.evaluate(batcher, session))
            for row in rows:
                row["rollout_reward_mean"] = round(stats(all_rewards)[0], 4)
                # The round's generation and weight update, shared by the steps trained from it.
                row["time_generate_s"] = round(generate_s / len(rows), 4)
                row["time_weight_sync_s"] = round(sync_s / len(rows), 4)
                await tr.report(row)
            if tr.crossed(step_before, cfg.checkpoint.interval_steps):
                await asyncio.to_thread(tr.checkpoint)
        published = await asyncio.to_thread(tr.publish)
        await tr.buffer.state.publish_version(tr.progress.version, published.uri)
    finally:
        tr.close()
        await engine.close()
        if session is not None:
            await session.close()
        if tr.buffer is not None:
            await tr.buffer.close()


def _fill(groups: list, max_samples: int) -> list:
    """Whole groups, in order, up to ``max_samples`` samples."""
    out, n = [], 0
    for g in groups:
        if out and n + len(g) > max_samples:
            break
        out.append(g)
        n += len(g)
    return out
