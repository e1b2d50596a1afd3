"""The AgentEnv reference server (protocol kuberl-episode-v1)."""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from kuberl.workloads.tasks.calculator import StepResult, calculator_step
from kuberl.workloads.tasks.verifiers import arithmetic_reward

REAPER = web.AppKey("reaper", asyncio.Task)


def sample_latency(distribution: str, median_s: float, tail: float, rng: random.Random) -> float:
    """One injected delay. lognormal: median·exp(tail·N(0,1)); pareto: shape 1/tail, scaled to the median."""
    if distribution == "none" or median_s <= 0:
        return 0.0
    if distribution == "lognormal":
        return median_s * math.exp(tail * rng.gauss(0.0, 1.0))
    if distribution == "pareto":
        alpha = 1.0 / tail
        scale = median_s / 2 ** (1.0 / alpha)  # Pareto median = scale · 2^(1/alpha)
        return scale * rng.paretovariate(alpha)
    raise ValueError(f"unknown latency distribution {distribution!r}")


@dataclass
class Episode:
    prompt: str
    answer: str
    started: float
    turn: int = 0
    done: bool = False


@dataclass
class EnvSettings:
    task: str = "arithmetic"
    concurrency: int = 32
    episode_timeout_s: float = 300.0
    latency: str = "none"
    latency_median_s: float = 0.0
    latency_tail: float = 1.0
    seed: int | None = None


def step_episode(task: str, ep: Episode, action: str) -> StepResult:
    """The task logic, pure: what one action does to one episode."""
    if task == "arithmetic":
        return StepResult("", arithmetic_reward(action, ep.answer), True)
    if task == "calculator-tool":
        return calculator_step(action, ep.answer, ep.turn)
    raise ValueError(f"unknown task {task!r}")


@dataclass
class EnvServer:
    settings: EnvSettings
    episodes: dict[str, Episode] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: {"started": 0, "refused": 0, "finished": 0, "timed_out": 0})

    def __post_init__(self) -> None:
        self.rng = random.Random(self.settings.seed)

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([
            web.get("/healthz", self.healthz),
            web.get("/stats", self.stats),
            web.post("/episodes", self.reset),
            web.post("/episodes/{id}/step", self.step),
            web.delete("/episodes/{id}", self.close),
        ])
        app.on_startup.append(self._start_reaper)
        return app

    async def _start_reaper(self, app: web.Application) -> None:
        async def reap() -> None:
            # Episodes whose agent vanished would hold a concurrency slot forever.
            while True:
                await asyncio.sleep(min(5.0, self.settings.episode_timeout_s))
                now = time.monotonic()
                for eid in [e for e, ep in self.episodes.items() if now - ep.started > 2 * self.settings.episode_timeout_s]:
                    self.episodes.pop(eid, None)
                    self.counters["timed_out"] += 1

        app[REAPER] = asyncio.create_task(reap())

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "task": self.settings.task})

    async def stats(self, request: web.Request) -> web.Response:
        s = self.settings
        return web.json_response({"open": len(self.episodes), **self.counters, "task": s.task, "concurrency": s.concurrency,
                                  "episode_timeout_s": s.episode_timeout_s, "latency": s.latency})

    async def reset(self, request: web.Request) -> web.Response:
        if len(self.episodes) >= self.settings.concurrency:
            self.counters["refused"] += 1
            return web.json_response({"error": f"at the concurrency limit of {self.settings.concurrency} episodes"}, status=429)
        body = await request.json()
        eid = uuid.uuid4().hex
        self.episodes[eid] = Episode(str(body["prompt"]), str(body["answer"]), time.monotonic())
        self.counters["started"] += 1
        return web.json_response({"episode_id": eid, "observation": str(body["prompt"])})

    async def step(self, request: web.Request) -> web.Response:
        eid = request.match_info["id"]
        ep = self.episodes.get(eid)
        if ep is None or ep.done:
            return web.json_response({"error": f"no open episode {eid}"}, status=404)
        body = await request.json()
        s = self.settings
        delay = sample_latency(s.latency, s.latency_median_s, s.latency_tail, self.rng)
        remaining = s.episode_timeout_s - (time.monotonic() - ep.started)
        if delay >= remaining:
            await asyncio.sleep(max(0.0, remaining))
            ep.done = True
            self.counters["timed_out"] += 1
            return web.json_response({"observation": "", "reward": 0.0, "done": True, "timed_out": True})
        await asyncio.sleep(delay)
        result = step_episode(s.task, ep, str(body["action"]))
        ep.turn += 1
        if result.done:
            ep.done = True
            self.counters["finished"] += 1
        return web.json_response({"observation": result.observation, "reward": result.reward, "done": result.done})

    async def close(self, request: web.Request) -> web.Response:
        self.episodes.pop(request.match_info["id"], None)
        return web.json_response({"ok": True})
