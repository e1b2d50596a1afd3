"""Colocated (synchronous) mode: generate a batch, train on it, update the engine in place."""

from __future__ import annotations

import asyncio
import math
import time

import aiohttp

from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.engines.batching import BatchingEngine
from kuberl.workloads.engines.torch_engine import TorchEngine
from kuberl.workloads.policy.tiny.train import (
    initial_model,
)
from kuberl.workloads.rl.sampling import has_signal
from kuberl.workloads.rollout.episodes import run_group
from kuberl.workloads.trainer.trainer import Trainer, stats


async def run_colocated(cfg: WorkloadConfig) -> None:
    tr = Trainer(cfg)
    tr.restore_or_init()
    await tr.open_buffer()
    engine = TorchEngine(initial_model(cfg.model), version=tr.progress.version, seed=int(time.time()) % 2**31)
    engine.load_state_dict(tr.model.state_dict(), tr.progress.version)
    batcher = BatchingEngine(engine)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) if cfg.reward.type == "agentEnv" else None
    tr._rl_t0 = time.monotonic()
    try:
        while tr.progress.step < cfg.run_policy.max_steps:
            stage = tr.progress.curriculum.stage
            group = tr.prompts.group_size(stage)
            n_prompts = max(1, cfg.algorithm.rollout_batch_size // group)
            if cfg.algorithm.dynamic_sampling:
                n_prompts = math.ceil(n_prompts * cfg.algorithm.over_sampling_factor)
            prompts = tr.prompts.take(n_prompts, stage)
            # Generate the whole rollout batch (on-policy), then train on it.
            groups = await asyncio.gather(*(run_group(batcher, p, cfg.reward, tr.prompts.sampling(stage), session, cfg.agent_envs) for p in prompts))
            all_rewards = [t.reward for g in groups for t in g]
            if cfg.algorithm.dynamic_sampling:
                kept = [g for g in groups if has_signal([t.reward for t in g])]
                groups = kept or groups[:1]
            per_step = max(1, cfg.algorithm.global_batch_size // group)
            for i in range(0, len(groups), per_step):
                if tr.progress.step >= cfg.run_policy.max_steps:
                    break
                row = tr.train_on(groups[i : i + per_step], {})
                row["rollout_reward_mean"] = round(stats(all_rewards)[0], 4)
                await tr.report(row)
                if tr.due(cfg.checkpoint.interval_steps):
                    await asyncio.to_thread(tr.checkpoint)
            # "Update engine weights in place": the trained tensors go straight into the engine.
            await batcher.swap({k: v.detach().clone() for k, v in tr.model.state_dict().items()}, tr.progress.version)
        manifest = await asyncio.to_thread(tr.publish)
        await tr.buffer.state.publish_version(tr.progress.version, manifest)
    finally:
        await batcher.stop()
        if session is not None:
            await session.close()
        if tr.buffer is not None:
            await tr.buffer.close()
