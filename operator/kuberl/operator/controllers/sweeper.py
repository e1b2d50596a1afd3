"""Periodic rounds: one sweeper over the watched jobs, pools and envs instead of one kopf
timer per object.

Rounds bring status up to date, supervise gangs, enforce deadlines and TTLs, re-assert
children deleted behind the operator's back and run the autoscaler. With a kopf timer per
object, 500 jobs meant 1,500 timer tasks and about 200 handler invocations a second, each
through kopf's machinery on its one event loop: a leader of 500 jobs spent a third of its
core on them in steady state and held 368 MiB; with the sweeper, 14 % and 288 MiB
(bench_operator_scale).

The sweeper is one task. Each tick it reads the custom objects from the watch cache, asks
the schedule (decisions.sweep) which rounds are due and starts those on the timer threads
(runtime.timer_round). It follows kopf's peering and readiness gate (adapters.kopf_reactor): a
standby runs no round, nor does a replica whose watches are still listing; after a
take-over an object gets rounds only once kopf's re-listing has shown it to this replica,
so an object deleted while it stood by is never reconciled from a stale copy.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from kuberl.operator.adapters import kopf_reactor
from kuberl.operator.api.constants import API_VERSION, KOPF_DIFFBASE_ANNOTATION
from kuberl.operator.controllers.agentenv import env_round
from kuberl.operator.controllers.rljob import job_round
from kuberl.operator.controllers.rolloutpool import pool_tick
from kuberl.operator.controllers.runtime import RT, managed_by_us, timer_round
from kuberl.operator.decisions.sweep import plan_tick, tick_period
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)


@dataclass
class Sweep:
    """One kind's periodic rounds."""

    kind: str
    interval_s: float
    # On the event loop: the round to run on a thread for this object now, or None.
    round_for: Callable[[Mapping], Callable[[], None] | None]
    next_due: dict[str, float] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)


def sweeps() -> list[Sweep]:
    settings = RT.settings
    return [
        Sweep("RLJob", settings.reconcile_interval_s,
              lambda body: (lambda: job_round(body)) if managed_by_us(body.get("spec") or {}) else None),
        Sweep("RolloutPool", settings.autoscaler_tick_s, pool_tick),
        Sweep("AgentEnv", settings.reconcile_interval_s, lambda body: lambda: env_round(body)),
    ]


def eligible(objects: list[dict[str, Any]], serving_since: float) -> list[dict[str, Any]]:
    """The objects a round may run on:
    * handled by their create handler (kopf's diff-base annotation is written once it
      succeeded): before that, a round would create the same children beside the handler,
      each a request the API server refuses as a duplicate (at a take-over, the jobs applied
      while no replica served doubled the requests of the busiest minute);
    * not being deleted (their finaliser handles them);
    * shown by the watch since this replica last began serving (`RT.last_watched`)."""
    return [obj for obj in objects
            if KOPF_DIFFBASE_ANNOTATION in (obj["metadata"].get("annotations") or {})
            and not obj["metadata"].get("deletionTimestamp") and RT.last_watched.get(obj["metadata"]["uid"],
                                                                                     -1.0) >= serving_since]


async def sweep_forever(kinds: list[Sweep]) -> None:
    period = tick_period(s.interval_s for s in kinds)
    tasks: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones
    serving_since = 0.0  # serving from the start, unless kopf starts paused (a standby)
    ready_at: float | None = None  # when rounds began: after start-up's or a take-over's listing
    while True:
        if not kopf_reactor.serving():
            await kopf_reactor.until_serving()  # a standby runs no round
            serving_since = time.monotonic()  # a take-over: only what its re-listing shows, on a fresh schedule
            ready_at = None
            for s in kinds:
                s.next_due.clear()
        if not kopf_reactor.indexed():
            await kopf_reactor.until_indexed()  # nor does a replica whose first listing is under way
            continue  # (it may have been paused meanwhile)
        # Rounds post Events through kopf's queue, which the first watch event hands over.
        if kopf_reactor.restore_event_queue():
            now = time.monotonic()
            ready_at = now if ready_at is None else ready_at
            for s in kinds:
                try:
                    tasks.update(_tick(s, serving_since, listed=now - ready_at < s.interval_s))
                except Exception:  # noqa: BLE001 (a bug in one tick must not end every later round)
                    log.exception("sweeper tick failed", kind=s.kind)
            tasks = {t for t in tasks if not t.done()}
        await asyncio.sleep(period)


def _tick(s: Sweep, serving_since: float, listed: bool) -> list[asyncio.Task]:
    """`listed`: within the first interval of rounds, when what is new to the schedule is
    what the listing found (their first rounds spread over the interval); after it, a new
    object is a new one, which its create handler has just reconciled (first round one
    interval later)."""
    try:
        objects = eligible(RT.watched.all(API_VERSION, s.kind), serving_since)
    except RuntimeError:  # the watch cache is bound by the start-up handler: not yet
        return []
    by_uid = {obj["metadata"]["uid"]: obj for obj in objects}
    plan = plan_tick(s.next_due, by_uid, s.running, time.monotonic(), s.interval_s,
                     capacity=2 * RT.settings.timer_threads - len(s.running),
                     first_offset=random.random if listed else _one)
    s.next_due = plan.next_due
    started = []
    for uid in plan.start:
        body = by_uid[uid]
        round_ = s.round_for(body)
        if round_ is None:
            continue
        s.running.add(uid)
        started.append(asyncio.create_task(_run(s, uid, body, round_), name=f"kuberl {s.kind} round"))
    return started


def _one() -> float:
    return 1.0


async def _run(s: Sweep, uid: str, body: Mapping, round_: Callable[[], None]) -> None:
    try:
        await timer_round(s.kind, body, round_)
    finally:
        s.running.discard(uid)


_SWEEPER: list[asyncio.Task] = []


@kopf.on.startup()
async def start_sweeper(**_: Any) -> None:
    kinds = sweeps()
    _SWEEPER.append(asyncio.create_task(sweep_forever(kinds), name="kuberl sweeper"))
    log.info("sweeper started", kinds={s.kind: s.interval_s for s in kinds})


@kopf.on.cleanup()
async def stop_sweeper(**_: Any) -> None:
    for task in _SWEEPER:
        task.cancel()
    _SWEEPER.clear()
