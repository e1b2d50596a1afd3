"""Turning a prompt into a scored group of trajectories: generation, environments, rewards.

Shared by the rollout agent (decoupled) and the colocated trainer. Episodes run as asyncio
tasks; their generation requests meet in a `BatchingEngine`, which runs whatever is queued
as one batched engine call in a worker thread, so a hundred concurrent episodes cost a
handful of forward passes per token, and the event loop (NATS heartbeats, HTTP) never blocks.
"""

from __future__ import annotations

import asyncio
import importlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import numpy as np

from kuberl.workloads.buffer import Prompt, Trajectory
from kuberl.workloads.engines import Completion, Engine, GenerationRequest
from kuberl.workloads.jobspec import RewardSpec
from kuberl.workloads.logs import get_logger
from kuberl.workloads.models import CharTokenizer
from kuberl.workloads.tasks import verifier_reward

log = get_logger(__name__)
TOKENIZER = CharTokenizer()


class BatchingEngine:
    """Async front of an `Engine`: queued requests run together; weight swaps run between batches."""

    def __init__(self, engine: Engine, linger_s: float = 0.002):
        self.engine, self.linger_s = engine, linger_s
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._running: set[int] = set()  # id() of the requests in the engine call now running
        self._engine_call: asyncio.Future | None = None
        self.rows_aborted = 0  # rows the engine was told to stop because their waiter went away

    @property
    def policy_version(self) -> int:
        return self.engine.policy_version

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="kuberl-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        # The engine call the loop was in runs on in its thread: let it end before the caller
        # closes the engine under it (a weight swap cut off there leaves the server on a
        # version the engine never recorded).
        if self._engine_call is not None and not self._engine_call.done():
            try:
                await self._engine_call
            except Exception:  # noqa: BLE001, S110 (its waiters are gone; stopping anyway)
                pass
        self._engine_call = None

    async def _in_thread(self, fn, *args):
        """Run an engine call in a worker thread; a cancelled loop leaves it to `stop` to await."""
        self._engine_call = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        return await asyncio.shield(self._engine_call)

    async def generate(self, request: GenerationRequest, on_dispatch: Callable[[int], None] | None = None) -> list[Completion]:
        """Completions of ``request``; ``on_dispatch(version)`` is called as its batch starts on the engine."""
        self.start()
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(("generate", (request, on_dispatch), fut))
        try:
            return await fut
        except asyncio.CancelledError:
            # Nobody wants these tokens any more (an abandoned group): stop decoding them if
            # the engine can, so the rest of the batch finishes sooner. A queued request is
            # simply skipped when its batch is formed.
            if id(request) in self._running:
                self.rows_aborted += await asyncio.shield(asyncio.to_thread(self.engine.abort, [request]))
            raise

    async def swap(self, tensors, version: int) -> None:
        """Load new weights once the batch now running finishes (the 'pause' policy)."""
        self.start()
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(("swap", (tensors, version), fut))
        await fut

    async def _loop(self) -> None:
        while True:
            items = [await self._queue.get()]
            await asyncio.sleep(self.linger_s)  # let concurrent episodes add their requests
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            gens = [(arg, fut) for kind, arg, fut in items if kind == "generate" and not fut.done()]  # done: its waiter was cancelled
            # New weights first: requests that waited alongside a swap get the fresher policy
            # (and a group re-queued after its stale attempt is not generated stale again).
            for (tensors, version), fut in [(arg, fut) for kind, arg, fut in items if kind == "swap"]:
                try:
                    await self._in_thread(self.engine.load_state_dict, tensors, version)
                    fut.set_result(None)
                except Exception as e:
                    fut.set_exception(e)
            if gens:
                version = self.engine.policy_version  # swaps run between batches, never during one
                for (_, on_dispatch), _ in gens:
                    if on_dispatch is not None:
                        on_dispatch(version)
                self._running = {id(r) for (r, _), _ in gens}
                try:
                    results = await self._in_thread(self.engine.generate, [r for (r, _), _ in gens])
                    for (_, fut), res in zip(gens, results, strict=True):
                        if not fut.done():
                            fut.set_result(res)
                except Exception as e:  # every waiter learns about the failure
                    for _, fut in gens:
                        if not fut.done():
                            fut.set_exception(e)
                finally:
                    self._running = set()


class DispatchTracker:
    """A `BatchingEngine` as one group sees it, noting the policy version of the group's first batch.

    Versions only move forward, so that first batch's version is the oldest any of the
    group's tokens carry — the version the trainer judges the group's staleness by.
    """

    def __init__(self, batcher: BatchingEngine):
        self._batcher = batcher
        self.first_version: int | None = None
        self.dispatched = asyncio.Event()

    @property
    def policy_version(self) -> int:
        return self._batcher.policy_version

    def _note(self, version: int) -> None:
        if self.first_version is None:
            self.first_version = version
            self.dispatched.set()

    async def generate(self, request: GenerationRequest) -> list[Completion]:
        return await self._batcher.generate(request, on_dispatch=self._note)


@dataclass(frozen=True)
class SamplingSettings:
    """What one group is generated with (the curriculum stage may override the job's values)."""

    max_new_tokens: int
    temperature: float


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


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]
