"""The AgentEnv reference server (protocol kuberl-episode-v1).

The protocol, JSON over HTTP:

``POST /episodes`` ``{"prompt": str, "answer": str | number}``
    starts an episode: ``200 {"episode_id": str, "observation": str, "endpoint"?: str}``;
    ``429`` at the concurrency limit (the client retries).
    ``endpoint`` (optional) is the base URL of the replica that owns the episode, e.g.
    ``http://10.1.2.3:8080``: episode state lives in one pod's memory while the Service
    balances each request to any pod, so a client sends the episode's step and DELETE there,
    and to the base URL it reset on when the field is absent (one replica, third-party
    servers). This server advertises ``--advertise-url``, else ``http://$POD_IP:<port>``,
    else nothing.
``POST /episodes/{id}/step`` ``{"action": str}``
    ``200 {"observation": str, "reward": float, "done": bool, "timed_out"?: true}``;
    ``404`` for an unknown or finished episode; ``409`` while another step of it runs.
    A step that would outlast the episode's remaining time ends it: done, reward 0, timed_out.
``DELETE /episodes/{id}``
    ends an episode and frees its slot (idempotent).
``GET /healthz``, ``GET /stats``
    liveness; counters (open, reserved, started, refused, finished, timed_out, …).

Errors answer ``{"error": str, "field"?: str}``: ``400`` for a body that is not a JSON object
(not UTF-8/16/32 JSON, nested too deeply, NaN or Infinity, a number out of range or over 1000
characters, a Content-Encoding it does not decode with) or misses/mistypes a field (``field``
names it), ``413`` for a body over the limit (1 MiB), ``408`` for a body that does not arrive
within the body timeout, ``404``/``405`` for an unknown path or method. No request body
answers 5xx (tests/workloads/agentenv/test_server_fuzz.py). A reset holds its slot from
before its body is read, so slow bodies cannot admit more than ``concurrency`` episodes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kuberl.workloads.agentenv.faults import Faults, fault_middleware
from kuberl.workloads.agentenv.protocol import MAX_BODY_BYTES, BadRequest, parse_reset, parse_step
from kuberl.workloads.logs import get_logger
from kuberl.workloads.tasks.calculator import StepResult, calculator_step
from kuberl.workloads.tasks.verifiers import arithmetic_reward

log = get_logger(__name__)
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
    stepping: bool = False  # a step is in flight: a second one at once would race on turn/done


@dataclass
class EnvSettings:
    task: str = "arithmetic"
    concurrency: int = 32
    episode_timeout_s: float = 300.0
    latency: str = "none"
    latency_median_s: float = 0.0
    latency_tail: float = 1.0
    seed: int | None = None
    endpoint: str | None = None  # advertised in reset answers (protocol.advertised_endpoint)
    max_body_bytes: int = MAX_BODY_BYTES
    body_timeout_s: float = 10.0  # a request body must arrive within this
    # An open connection that has sent no complete request headers (idle keep-alive, or a
    # slow-loris header drip) is closed after this; longer than aiohttp clients' 15 s
    # keep-alive, so clients close idle connections first and never reuse one being closed.
    idle_timeout_s: float = 75.0
    faults: Faults = Faults()  # injected drops and errors (agentenv.faults), off by default


# After an answer that did not read the whole body (408, 413), aiohttp reads and drops the rest
# for this long so that a client still writing gets to see the answer; its default, 10 s, is a
# long time to hold a connection for a body that has stopped coming.
LINGER_S = 1.0


class _ConnectionLog(logging.LoggerAdapter):
    """aiohttp's per-connection log, less one false alarm.

    A body that does not decode as its Content-Encoding, met while aiohttp drains it after the
    answer (a route that takes no body, a 413 sent before reading), fails that drain. aiohttp
    logs it at error level as an unhandled exception, but the answer went out and the mistake
    is the client's: it is logged at debug, and the connection closes as it would anyway.
    """

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, web.RequestPayloadError):
            self.debug("request body dropped after the answer: %s", exc_info)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


def serving_options(settings: EnvSettings) -> dict[str, Any]:
    """Connection options for web.run_app / web.AppRunner (the header timeout among them)."""
    return {"keepalive_timeout": settings.idle_timeout_s, "lingering_time": LINGER_S, "access_log": None,
            "logger": _ConnectionLog(logging.getLogger("aiohttp.server"))}


class _Refused(Exception):
    """Ends a request early with a JSON error (the errors middleware answers it)."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.close = status, close


@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as e:
        log.debug("request refused", path=request.path, status=400, field=e.field, error=str(e))
        return web.json_response(e.answer(), status=400)
    except _Refused as e:
        log.debug("request refused", path=request.path, status=e.status, error=str(e))
        resp = web.json_response({"error": str(e)}, status=e.status)
        if e.close:
            resp.force_close()  # the rest of the body is not worth waiting for
        return resp
    except web.HTTPException as e:
        if e.status < 400:
            raise
        # The router's 404 and 405 (and aiohttp's own 4xx), as JSON like every other error.
        if isinstance(e, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(e.allowed_methods))
            message = f"{request.method} is not allowed on {request.path[:200]} (allowed: {allowed})"
        elif isinstance(e, web.HTTPNotFound):
            message = f"no route {request.path[:200]}"
        else:
            message = e.reason
        return web.json_response({"error": message}, status=e.status,
                                 headers={k: v for k, v in e.headers.items() if k == "Allow"})


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, or _Refused: 413 over ``limit`` bytes, 408 when it takes longer than ``timeout_s``."""
    if request.content_length is not None and request.content_length > limit:
        raise _Refused(413, f"request body of {request.content_length} bytes is over the limit of {limit}", close=True)
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise _Refused(408, f"request body did not arrive within {timeout_s:g} s", close=True) from None
    except web.HTTPRequestEntityTooLarge:  # chunked bodies have no length to check up front
        raise _Refused(413, f"request body is over the limit of {limit} bytes", close=True) from None
    except web.RequestPayloadError as e:  # e.g. Content-Encoding: gzip on bytes that are not gzip
        detail = getattr(e.__cause__, "message", None) or str(e)
        # The parser has given up on this body; marked ended, aiohttp's read of the rest after
        # the answer does not raise the error again (logged as an "Unhandled exception").
        request.content.feed_eof()
        raise _Refused(400, f"request body could not be decoded: {detail}", close=True) from None


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
    counters: dict[str, int] = field(default_factory=lambda: {"started": 0, "refused": 0, "finished": 0, "timed_out": 0,
                                                              "rejected": 0})
    reserved: int = 0  # resets admitted whose body is still being read

    def __post_init__(self) -> None:
        self.rng = random.Random(self.settings.seed)

    def app(self) -> web.Application:
        # client_max_size also bounds what request.read() buffers for chunked bodies.
        middlewares = [_errors]
        if self.settings.faults.any:
            middlewares.insert(0,
                               fault_middleware(self.settings.faults, random.Random(self.settings.seed), self.counters))
        app = web.Application(client_max_size=self.settings.max_body_bytes, middlewares=middlewares)
        app.add_routes([
            web.get("/healthz", self.healthz),
            web.get("/stats", self.stats),
            web.post("/episodes", self.reset),
            web.post("/episodes/{id}/step", self.step),
            web.delete("/episodes/{id}", self.close),
        ])
        app.on_startup.append(self._start_reaper)
        app.on_shutdown.append(self._log_counters)
        return app

    async def _log_counters(self, app: web.Application) -> None:
        log.info("agentenv stopping", open=len(self.episodes), **self.counters)

    async def _start_reaper(self, app: web.Application) -> None:
        async def reap() -> None:
            # Episodes whose agent vanished would hold a concurrency slot forever.
            while True:
                await asyncio.sleep(min(5.0, self.settings.episode_timeout_s))
                now = time.monotonic()
                for eid in [e for e,
                            ep in self.episodes.items() if now - ep.started > 2 * self.settings.episode_timeout_s]:
                    self.episodes.pop(eid, None)
                    self.counters["timed_out"] += 1

        app[REAPER] = asyncio.create_task(reap())

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "task": self.settings.task})

    async def stats(self, request: web.Request) -> web.Response:
        s = self.settings
        return web.json_response({"open": len(self.episodes), "reserved": self.reserved, **self.counters,
                                  "task": s.task,
                                  "concurrency": s.concurrency, "episode_timeout_s": s.episode_timeout_s,
                                  "latency": s.latency,
                                  "endpoint": s.endpoint})

    async def _body(self, request: web.Request) -> bytes:
        try:
            return await read_body(request, self.settings.max_body_bytes, self.settings.body_timeout_s)
        except _Refused:
            self.counters["rejected"] += 1
            raise

    async def reset(self, request: web.Request) -> web.Response:
        s = self.settings
        # The slot is taken before the first await: a check here and an insert after a slow
        # body would let every request that arrived meanwhile through.
        if len(self.episodes) + self.reserved >= s.concurrency:
            self.counters["refused"] += 1
            return web.json_response({"error": f"at the concurrency limit of {s.concurrency} episodes"}, status=429)
        self.reserved += 1
        try:
            try:
                prompt, answer = parse_reset(await self._body(request))
            except BadRequest:
                self.counters["rejected"] += 1
                raise
            eid = uuid.uuid4().hex
            self.episodes[eid] = Episode(prompt, answer, time.monotonic())
        finally:
            self.reserved -= 1
        self.counters["started"] += 1
        answer_body = {"episode_id": eid, "observation": prompt}
        if s.endpoint:
            answer_body["endpoint"] = s.endpoint
        return web.json_response(answer_body)

    async def step(self, request: web.Request) -> web.Response:
        eid = request.match_info["id"]
        ep = self.episodes.get(eid)
        if ep is None or ep.done:
            return web.json_response({"error": f"no open episode {eid}"}, status=404)
        if ep.stepping:
            return web.json_response({"error": f"episode {eid} has a step in progress"}, status=409)
        ep.stepping = True
        try:
            return await self._step(ep, request)
        finally:
            ep.stepping = False

    async def _step(self, ep: Episode, request: web.Request) -> web.Response:
        try:
            action = parse_step(await self._body(request))
        except BadRequest:
            self.counters["rejected"] += 1
            raise
        s = self.settings
        delay = sample_latency(s.latency, s.latency_median_s, s.latency_tail, self.rng)
        remaining = s.episode_timeout_s - (time.monotonic() - ep.started)
        try:
            # The injected latency and the task call together get what is left of the episode;
            # the task runs in a thread so a slow one cannot hold the event loop (and the timer).
            async with asyncio.timeout(max(0.0, remaining)):
                await asyncio.sleep(delay)
                result = await asyncio.to_thread(step_episode, s.task, ep, action)
        except TimeoutError:
            ep.done = True
            self.counters["timed_out"] += 1
            return web.json_response({"observation": "", "reward": 0.0, "done": True, "timed_out": True})
        ep.turn += 1
        if result.done:
            ep.done = True
            self.counters["finished"] += 1
        return web.json_response({"observation": result.observation, "reward": result.reward, "done": result.done})

    async def close(self, request: web.Request) -> web.Response:
        self.episodes.pop(request.match_info["id"], None)
        return web.json_response({"ok": True})
