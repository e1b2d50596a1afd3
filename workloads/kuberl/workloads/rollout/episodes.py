"""Turning a prompt into a scored group of trajectories: generation, environments, rewards."""

from __future__ import annotations

import asyncio
import importlib
import time
from dataclasses import dataclass

import aiohttp
import numpy as np

from kuberl.workloads.buffer.records import Prompt, Trajectory
from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.engines.base import GenerationRequest
from kuberl.workloads.engines.batching import BatchingEngine, DispatchTracker
from kuberl.workloads.logs import get_logger
from kuberl.workloads.policy.tiny.tokenizer import CharTokenizer
from kuberl.workloads.spec import RewardSpec
from kuberl.workloads.tasks.verifiers import verifier_reward

log = get_logger(__name__)


TOKENIZER = CharTokenizer()


@dataclass(frozen=True)
class SamplingSettings:
    """What one group is generated with (the curriculum stage may override the job's values)."""

    max_new_tokens: int
    temperature: float

    @classmethod
    def for_stage(cls, cfg: WorkloadConfig, stage: int) -> SamplingSettings:
        """The job's sampling settings in curriculum stage ``stage`` (its maxResponseLength wins)."""
        length = cfg.algorithm.max_response_length
        if cfg.curriculum is not None and stage < len(cfg.curriculum.stages):
            length = cfg.curriculum.stages[stage].max_response_length or length
        return cls(length, cfg.algorithm.temperature)


def _strip_stop(ids: list[int]) -> list[int]:
    return [t for t in ids if t != TOKENIZER.EOS]


def _python_reward(entry_point: str):
    module, func = entry_point.split(":")
    return getattr(importlib.import_module(module), func)


def score(reward: RewardSpec, prompt: dict, response: str) -> float:
    """Reward of a single-turn response (verifier or python entry point)."""
    if reward.type == "verifier":
        return verifier_reward(reward.verifier.name, response, str(prompt["answer"]))
    if reward.type == "python":
        return float(_python_reward(reward.python.entry_point)(prompt["prompt"], response, prompt))
    raise ValueError(f"reward type {reward.type!r} is scored by its environment, not locally")


def _trajectory(prompt: Prompt, index: int, tokens: list[int], logprobs: list[float], mask: list[int], reward: float,
                version: int, timing: dict[str, float], meta: dict) -> Trajectory:
    return Trajectory(
        sample_id=f"{prompt.msg_id}/{index}", prompt_id=prompt.prompt_id, group_id=prompt.group_id,
        policy_version=version, tokens=np.asarray(tokens), logprobs=np.asarray(logprobs, dtype=np.float32),
        loss_mask=np.asarray(mask), reward=reward, timing=timing,
        meta={"group_size": prompt.n_samples, "stage": prompt.stage, **meta},
    )


async def verifier_group(engine: BatchingEngine | DispatchTracker, prompt: Prompt, reward: RewardSpec, sampling: SamplingSettings) -> list[Trajectory]:
    """One generation call for the whole group, scored locally."""
    t0 = time.monotonic()
    prompt_ids = TOKENIZER.encode(prompt.data["prompt"], bos=True)
    completions = await engine.generate(GenerationRequest(prompt_ids, prompt.n_samples, sampling.max_new_tokens, sampling.temperature))
    t_gen = time.monotonic() - t0
    out = []
    for i, c in enumerate(completions):
        response = TOKENIZER.decode(_strip_stop(c.token_ids))
        r = score(reward, prompt.data, response)
        out.append(_trajectory(prompt, i, prompt_ids + c.token_ids, [0.0] * len(prompt_ids) + c.logprobs,
                               [0] * len(prompt_ids) + [1] * len(c.token_ids), r, c.policy_version,
                               {"generate": t_gen}, {"response": response}))
    return out


class EnvBusy(Exception):
    """The environment refused a new episode (429): at its concurrency limit."""


async def _post(session: aiohttp.ClientSession, url: str, body: dict, retry_for_s: float = 120.0) -> dict:
    """POST with retries on 429/503 and connection errors (environments restart, fill up)."""
    deadline = time.monotonic() + retry_for_s
    delay = 0.05
    while True:
        try:
            async with session.post(url, json=body) as resp:
                if resp.status in (429, 503):
                    raise EnvBusy(f"{url}: {resp.status}")
                resp.raise_for_status()
                return await resp.json()
        except (EnvBusy, aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
            if time.monotonic() > deadline:
                raise
            log.debug("environment retry", url=url, error=str(e))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def env_episode(engine: BatchingEngine | DispatchTracker, session: aiohttp.ClientSession, base_url: str, prompt: Prompt, index: int,
                      sampling: SamplingSettings, max_turns: int = 4) -> Trajectory:
    """A (multi-turn) episode: reset, then generate an action and step until the env says done.

    Environment observations enter the token stream with loss mask 0 (not trained on);
    the trajectory is tagged with the oldest policy version that produced any of its tokens.
    """
    t0 = time.monotonic()
    started = await _post(session, f"{base_url}/episodes", {"prompt": prompt.data["prompt"], "answer": prompt.data["answer"]})
    episode = started["episode_id"]
    tokens = TOKENIZER.encode(started["observation"], bos=True)
    logprobs, mask = [0.0] * len(tokens), [0] * len(tokens)
    versions, reward, t_gen, t_env, turns = [], 0.0, 0.0, 0.0, 0
    try:
        for turns in range(1, max_turns + 1):
            g0 = time.monotonic()
            (c,) = await engine.generate(GenerationRequest(list(tokens), 1, sampling.max_new_tokens, sampling.temperature))
            t_gen += time.monotonic() - g0
            versions.append(c.policy_version)
            tokens += c.token_ids
            logprobs += c.logprobs
            mask += [1] * len(c.token_ids)
            e0 = time.monotonic()
            step = await _post(session, f"{base_url}/episodes/{episode}/step", {"action": TOKENIZER.decode(_strip_stop(c.token_ids))})
            t_env += time.monotonic() - e0
            reward = float(step["reward"])
            if step["done"]:
                break
            obs = TOKENIZER.encode(step["observation"])
            tokens += obs
            logprobs += [0.0] * len(obs)
            mask += [0] * len(obs)
    finally:
        try:
            async with session.delete(f"{base_url}/episodes/{episode}"):
                pass
        except aiohttp.ClientError:
            pass
    return _trajectory(prompt, index, tokens, logprobs, mask, reward, min(versions) if versions else engine.policy_version,
                       {"generate": t_gen, "env": t_env, "total": time.monotonic() - t0}, {"turns": turns})


async def run_group(engine: BatchingEngine | DispatchTracker, prompt: Prompt, reward: RewardSpec, sampling: SamplingSettings,
                    session: aiohttp.ClientSession | None = None, env_urls: dict[str, str] | None = None) -> list[Trajectory]:
    """The scored group for one prompt, by whichever route the reward takes."""
    if reward.type != "agentEnv":
        return await verifier_group(engine, prompt, reward, sampling)
    url = (env_urls or {}).get(reward.agent_env)
    if not url or session is None:
        raise ValueError(f"reward uses agent environment {reward.agent_env!r} but no URL for it is configured")
    return list(await asyncio.gather(*(env_episode(engine, session, url, prompt, i, sampling) for i in range(prompt.n_samples))))
