"""Turning a prompt into a scored group of trajectories: generation, environments, rewards."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import aiohttp
import numpy as np

from kuberl.workloads.buffer.records import INFRA_FAILED, Prompt, Trajectory
from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.engines.base import GenerationRequest
from kuberl.workloads.engines.batching import BatchingEngine, DispatchTracker
from kuberl.workloads.logs import get_logger
from kuberl.workloads.policy.tokenizer import Tokenizer
from kuberl.workloads.spec import RewardSpec
from kuberl.workloads.episodes.rewards import score

log = get_logger(__name__)


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


def _trajectory(prompt: Prompt, index: int, tokens: list[int], logprobs: list[float], mask: list[int], reward: float,
                version: int, timing: dict[str, float], meta: dict) -> Trajectory:
    return Trajectory(
        sample_id=f"{prompt.msg_id}/{index}", prompt_id=prompt.prompt_id, group_id=prompt.group_id,
        policy_version=version, tokens=np.asarray(tokens), logprobs=np.asarray(logprobs, dtype=np.float32),
        loss_mask=np.asarray(mask), reward=reward, timing=timing,
        meta={"group_size": prompt.n_samples, "stage": prompt.stage, **meta},
    )


async def verifier_group(engine: BatchingEngine | DispatchTracker, prompt: Prompt, reward: RewardSpec,
                         sampling: SamplingSettings,
                         tokenizer: Tokenizer) -> list[Trajectory]:
    """One generation call for the whole group, scored locally."""
    t0 = time.monotonic()
    prompt_ids = tokenizer.encode_prompt(prompt.data)
    completions = await engine.generate(GenerationRequest(prompt_ids, prompt.n_samples, sampling.max_new_tokens,
                                                          sampling.temperature,
                                                          tokenizer.stop_ids))
    t_gen = time.monotonic() - t0
    out = []
    for i, c in enumerate(completions):
        response = tokenizer.decode(c.token_ids)
        scored = await score(reward, prompt.data, response)
        meta = {"response": response, **({INFRA_FAILED: scored.failure} if scored.failure else {})}
        out.append(_trajectory(prompt, i, prompt_ids + c.token_ids, [0.0] * len(prompt_ids) + c.logprobs,
                               [0] * len(prompt_ids) + [1] * len(c.token_ids), scored.value, c.policy_version,
                               {"generate": t_gen}, meta))
    return out


class EnvAnswerInvalid(ValueError):
    """The environment answered, but not as the protocol says (not JSON, a field missing or mistyped)."""


def answer_field(answer: Any, name: str, kinds: type | tuple[type, ...]) -> Any:
    """``answer[name]`` when it is of one of ``kinds``, else EnvAnswerInvalid naming the field."""
    value = answer.get(name) if isinstance(answer, dict) else None
    allowed = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):  # JSON true is no number
        raise EnvAnswerInvalid(f"the answer's {name!r} is {value!r}, not {' or '.join(k.__name__ for k in allowed)}")
    return value


class EnvBusy(Exception):
    """The environment refused a new episode (429): at its concurrency limit."""


class StepTimedOut(Exception):
    """An environment step sent no answer within the client's read timeout."""


# The AgentEnv default episodeTimeoutSeconds, for a config that carries no environment's own
# (WorkloadConfig.agent_env_episode_timeouts). A step can legitimately take up to that long
# (the reference server answers timed_out when the episode's time runs out), so the read
# bound sits above it.
ENV_EPISODE_TIMEOUT_S = 300.0
ENV_TIMEOUT_MARGIN_S = 30.0
ENV_CONNECT_TIMEOUT_S = 10.0
ENV_CLOSE_TIMEOUT_S = 10.0  # ending an episode is bookkeeping: never worth a full step's wait


def env_client_timeout(episode_timeout_s: float = ENV_EPISODE_TIMEOUT_S, margin_s: float = ENV_TIMEOUT_MARGIN_S,
                       connect_s: float = ENV_CONNECT_TIMEOUT_S) -> aiohttp.ClientTimeout:
    """The timeouts of a session talking to agent environments.

    No total: a session lives for the whole run. A connection must open within ``connect_s``;
    an answer (any byte of it) must come within the episode's timeout plus a margin, so a
    hung environment costs one episode (failed, reward 0) instead of a group stuck forever.
    """
    return aiohttp.ClientTimeout(total=None, connect=connect_s, sock_connect=connect_s,
                                 sock_read=episode_timeout_s + margin_s)


def env_session_timeout(cfg: WorkloadConfig) -> aiohttp.ClientTimeout:
    """`env_client_timeout` for a job: the longest episode timeout among its environments."""
    return env_client_timeout(float(max(cfg.agent_env_episode_timeouts.values(), default=ENV_EPISODE_TIMEOUT_S)))


def episode_url(base_url: str, started: dict) -> str:
    """Where an episode's steps and DELETE go: the replica the reset answer names as its
    ``endpoint`` (state lives in that pod), else the URL the episode was reset on."""
    endpoint = started.get("endpoint")
    if endpoint is None:
        return base_url
    if not isinstance(endpoint, str) or urlparse(endpoint).scheme not in ("http",
                                                                          "https") or not urlparse(endpoint).netloc:
        raise EnvAnswerInvalid(
            f"environment at {base_url} answered an endpoint {endpoint!r} that is not an http(s) URL"
        )
    return endpoint.rstrip("/")


def _is_read_timeout(e: BaseException) -> bool:
    # A connect timeout means the request was never sent: safe to retry. A read timeout means
    # the environment may have taken the action: retrying a step would replay it.
    return isinstance(e, asyncio.TimeoutError) and not isinstance(e, aiohttp.ConnectionTimeoutError)


async def _post(session: aiohttp.ClientSession, url: str, body: dict, retry_for_s: float = 120.0,
                retry_read_timeouts: bool = True) -> dict:
    """POST with retries on 429/503 and connection errors (environments restart, fill up).

    With ``retry_read_timeouts`` False, a read timeout raises StepTimedOut at once.
    """
    deadline = time.monotonic() + retry_for_s
    delay = 0.05
    while True:
        try:
            async with session.post(url, json=body) as resp:
                if resp.status in (429, 503):
                    raise EnvBusy(f"{url}: {resp.status}")
                resp.raise_for_status()
                try:
                    return await resp.json()
                except ValueError as e:  # not JSON (aiohttp's own content-type error is a ClientError)
                    raise EnvAnswerInvalid(f"{url}: the answer is not JSON: {e}") from e
        except (EnvBusy, aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
            if not retry_read_timeouts and _is_read_timeout(e):
                raise StepTimedOut(f"{url}: no answer within the read timeout") from e
            if time.monotonic() > deadline:
                raise
            log.debug("environment retry", url=url, error=str(e))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def _close(session: aiohttp.ClientSession, url: str) -> None:
    try:
        async with session.delete(url, timeout=aiohttp.ClientTimeout(total=ENV_CLOSE_TIMEOUT_S)):
            pass
    except (aiohttp.ClientError, asyncio.TimeoutError):
        pass  # the server's reaper frees the slot of an episode nobody closed


# What an environment that is down or broken raises (after `_post`'s retries): the episode
# is an infrastructure failure, not a reward of 0 for what the policy did.
ENV_INFRA_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, EnvBusy, EnvAnswerInvalid)


async def env_episode(engine: BatchingEngine | DispatchTracker, session: aiohttp.ClientSession, base_url: str,
                      prompt: Prompt, index: int,
                      sampling: SamplingSettings, tokenizer: Tokenizer, max_turns: int = 4) -> Trajectory:
    """`_env_episode`, or, when the environment cannot be reached, answers 5xx (or 4xx: a
    request of ours it cannot serve), or sends an answer without its fields, a trajectory of
    the prompt alone marked as an infrastructure failure: its group goes on without it."""
    t0 = time.monotonic()
    try:
        return await _env_episode(engine, session, base_url, prompt, index, sampling, tokenizer, max_turns)
    except ENV_INFRA_ERRORS as e:
        failure = f"environment {base_url}: {type(e).__name__}: {e}"[:500]
        log.warning("environment episode failed; the sample is masked", error=failure)
        tokens = tokenizer.encode_prompt({"prompt": prompt.data["prompt"]})
        return _trajectory(prompt, index, tokens, [0.0] * len(tokens), [0] * len(tokens), 0.0, engine.policy_version,
                           {"total": time.monotonic() - t0}, {"turns": 0, INFRA_FAILED: failure})


async def _env_episode(engine: BatchingEngine | DispatchTracker, session: aiohttp.ClientSession, base_url: str,
                       prompt: Prompt, index: int,
                       sampling: SamplingSettings, tokenizer: Tokenizer, max_turns: int = 4) -> Trajectory:
    """A (multi-turn) episode: reset, then generate an action and step until the env says done.

    Environment observations enter the token stream with loss mask 0 (not trained on);
    the trajectory is tagged with the oldest policy version that produced any of its tokens.
    A step the environment ends as ``timed_out`` (the episode's own time ran out) scores what
    the environment says (0); a step with no answer at all within the session's read
    timeout ends the episode as an infrastructure failure (masked, counted).
    """
    t0 = time.monotonic()
    started = await _post(session, f"{base_url}/episodes",
                          {"prompt": prompt.data["prompt"], "answer": prompt.data["answer"]})
    episode = answer_field(started, "episode_id", str)
    owner = episode_url(base_url, started)
    tokens = tokenizer.encode_prompt({"prompt": answer_field(started, "observation", str)})
    logprobs, mask = [0.0] * len(tokens), [0] * len(tokens)
    versions, reward, t_gen, t_env, turns, timed_out, failure = [], 0.0, 0.0, 0.0, 0, False, None
    try:
        for turns in range(1, max_turns + 1):
            g0 = time.monotonic()
            (c,
             ) = await engine.generate(GenerationRequest(list(tokens), 1, sampling.max_new_tokens, sampling.temperature,
                                                           tokenizer.stop_ids))
            t_gen += time.monotonic() - g0
            versions.append(c.policy_version)
            tokens += c.token_ids
            logprobs += c.logprobs
            mask += [1] * len(c.token_ids)
            e0 = time.monotonic()
            try:
                step = await _post(session, f"{owner}/episodes/{episode}/step",
                                   {"action": tokenizer.decode(c.token_ids)}, retry_read_timeouts=False)
            except StepTimedOut as e:
                log.warning("environment step timed out; the sample is masked", episode=episode, error=str(e))
                reward, timed_out, failure = 0.0, True, str(e)
                break
            finally:
                t_env += time.monotonic() - e0
            reward = float(answer_field(step, "reward", (int, float)))
            timed_out = bool(step.get("timed_out", False))
            if answer_field(step, "done", bool):
                break
            obs = tokenizer.encode(answer_field(step, "observation", str))
            tokens += obs
            logprobs += [0.0] * len(obs)
            mask += [0] * len(obs)
    finally:
        await _close(session, f"{owner}/episodes/{episode}")
    meta = {"turns": turns, **({"timed_out": True} if timed_out else {}),
            **({INFRA_FAILED: failure} if failure else {})}
    return _trajectory(prompt, index, tokens, logprobs, mask, reward,
                       min(versions) if versions else engine.policy_version,
                       {"generate": t_gen, "env": t_env, "total": time.monotonic() - t0}, meta)


async def run_group(engine: BatchingEngine | DispatchTracker, prompt: Prompt, reward: RewardSpec,
                    sampling: SamplingSettings,
                    tokenizer: Tokenizer, session: aiohttp.ClientSession | None = None,
                    env_urls: dict[str, str] | None = None) -> list[Trajectory]:
    """The scored group for one prompt, by whichever route the reward takes (the trainer's
    colocated engine, its evaluation and the rollout agents all call this)."""
    if reward.type != "agentEnv":
        return await verifier_group(engine, prompt, reward, sampling, tokenizer)
    url = (env_urls or {}).get(reward.agent_env)
    if not url or session is None:
        raise ValueError(f"reward uses agent environment {reward.agent_env!r} but no URL for it is configured")
    return list(await asyncio.gather(*(env_episode(engine, session, url, prompt, i, sampling,
                                                   tokenizer) for i in range(prompt.n_samples))))
