"""The sweeper runs each watched object's round once per interval, on the timer threads, only
while this replica serves, and only on objects the watch showed since it began serving."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from kopf._cogs.aiokits import aiotoggles

from kuberl.operator.adapters import kopf_reactor
from kuberl.operator.adapters.watch_cache import INDEX_IDS, WatchCache, index_keys
from kuberl.operator.api.constants import API_VERSION, KOPF_DIFFBASE_ANNOTATION
from kuberl.operator.controllers import sweeper
from kuberl.operator.controllers.runtime import RT


def job(name: str, deleting: bool = False, handled: bool = True) -> dict:
    meta = {"name": name, "namespace": "ns", "uid": f"u-{name}", "resourceVersion": "1",
            "annotations": {KOPF_DIFFBASE_ANNOTATION: "{}"} if handled else {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-06T00:00:00Z"
    return {"apiVersion": API_VERSION, "kind": "RLJob", "metadata": meta, "spec": {}}


@pytest.fixture
def watched(monkeypatch):
    """RT's watch cache holding the given jobs, each stamped as watched now."""
    monkeypatch.setattr(RT, "watched", WatchCache())
    monkeypatch.setattr(RT, "last_watched", {})
    monkeypatch.setattr(kopf_reactor, "_event_queue", (object(), None))  # rounds here post no Event
    monkeypatch.setattr(kopf_reactor, "_paused", None)
    monkeypatch.setattr(kopf_reactor, "_indexed", None)

    def show(*jobs: dict) -> None:
        index: dict = {}
        for body in jobs:
            for key, value in index_keys("RLJob", body).items():
                index.setdefault(key, []).append(value)
            RT.last_watched[body["metadata"]["uid"]] = time.monotonic()
        RT.watched.bind({index_id: index if kind == "RLJob" else {} for (_, kind), index_id in INDEX_IDS.items()})

    return show


def recording_sweep(interval_s: float) -> tuple[sweeper.Sweep, dict[str, int], set[str]]:
    rounds: dict[str, int] = {}
    threads: set[str] = set()
    lock = threading.Lock()

    def round_for(body):
        def run():
            with lock:
                rounds[body["metadata"]["name"]] = rounds.get(body["metadata"]["name"], 0) + 1
                threads.add(threading.current_thread().name)
        return run

    return sweeper.Sweep("RLJob", interval_s, round_for), rounds, threads


async def sweep_for(sweep: sweeper.Sweep, seconds: float, during=None) -> None:
    task = asyncio.create_task(sweeper.sweep_forever([sweep]))
    try:
        if during is not None:
            await during()
        await asyncio.sleep(seconds)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def held_shut(monkeypatch, attribute: str, combine, name: str) -> aiotoggles.Toggle:
    """kopf's toggle set kopf_reactor keeps as `attribute` (paused: any, indexed: all), held
    shut by one toggle; the toggle is returned to open it."""
    toggles = aiotoggles.ToggleSet(combine)
    toggle = await toggles.make_toggle(combine is any, name=name)  # paused while on; not indexed while off
    monkeypatch.setattr(kopf_reactor, attribute, toggles)
    return toggle


def test_each_object_gets_a_round_per_interval_on_the_timer_threads_deleting_and_unhandled_ones_none(watched):
    sweep, rounds, threads = recording_sweep(interval_s=0.2)
    watched(job("a"), job("b"), job("doomed", deleting=True), job("unhandled", handled=False))
    asyncio.run(sweep_for(sweep, 1.1))
    # First rounds spread over the first 0.2 s, then one every 0.2 s: 5 or 6 in 1.1 s.
    assert set(rounds) == {"a", "b"} and all(4 <= n <= 7 for n in rounds.values()), rounds
    assert threads and all(name.startswith("kuberl-timer") for name in threads)


def test_a_paused_replica_runs_no_round_and_after_resuming_only_objects_watched_since(watched, monkeypatch):
    sweep, rounds, _ = recording_sweep(interval_s=0.1)

    async def drill():
        peering = await held_shut(monkeypatch, "_paused", any, "another replica leads")
        watched(job("stale"))  # shown before this replica took over

        async def take_over():
            await asyncio.sleep(0.5)
            assert rounds == {}, "a standby ran rounds"
            await peering.turn_to(False)  # the leader is gone
            await asyncio.sleep(0.05)
            watched(job("live"))  # the take-over's re-listing shows only what still exists

        await sweep_for(sweep, 0.6, during=take_over)

    asyncio.run(drill())
    assert set(rounds) == {"live"} and rounds["live"] >= 3, rounds


def test_no_round_while_the_first_listing_is_under_way_then_on_everything_it_listed(watched, monkeypatch):
    sweep, rounds, _ = recording_sweep(interval_s=0.1)

    async def drill():
        listing = await held_shut(monkeypatch, "_indexed", all, "pods@ns")
        watched(job("early"))  # jobs are listed, pods still listing: children would look missing

        async def listed():
            await asyncio.sleep(0.4)
            assert rounds == {}, "rounds ran on a half-listed cache"
            await listing.turn_to(True)

        await sweep_for(sweep, 0.5, during=listed)

    asyncio.run(drill())
    assert set(rounds) == {"early"} and rounds["early"] >= 3, rounds


def test_no_round_before_kopf_handed_over_its_event_queue(watched, monkeypatch):
    sweep, rounds, _ = recording_sweep(interval_s=0.1)
    watched(job("a"))
    monkeypatch.setattr(kopf_reactor, "_event_queue", None)
    asyncio.run(sweep_for(sweep, 0.4))
    assert rounds == {}


def test_an_object_created_after_the_listing_gets_its_first_round_one_interval_later(watched):
    sweep, rounds, _ = recording_sweep(interval_s=0.3)

    async def created():
        await asyncio.sleep(0.45)  # past the first interval: what is new now was created, not listed
        watched(job("listed"), job("created"))
        await asyncio.sleep(0.2)
        assert "created" not in rounds, "a new object's round ran beside its create handler"

    watched(job("listed"))
    asyncio.run(sweep_for(sweep, 0.35, during=created))
    assert rounds.get("created") == 1 and rounds["listed"] >= 2, rounds


def test_a_periodic_round_skips_an_object_a_handler_is_reconciling(watched):
    from kuberl.operator.controllers.runtime import PERIODIC, reconcile_fresh

    body = job("busy")
    watched(body)
    seen = []
    with RT.lock(body["metadata"]["uid"]):  # a create handler holds it
        reconcile_fresh("RLJob", body, PERIODIC, seen.append)
    assert seen == []
    reconcile_fresh("RLJob", body, PERIODIC, seen.append)
    assert [b["metadata"]["name"] for b in seen] == ["busy"]


def test_a_failing_handler_comes_back_to_kopf_as_a_temporary_error_retried_soon():
    import kopf

    from kuberl.operator.controllers.runtime import handled

    def busy_api_server():
        raise RuntimeError("429 Too Many Requests")

    with pytest.raises(kopf.TemporaryError, match="429 Too Many Requests") as raised:
        handled("RLJob", 2, busy_api_server)
    assert raised.value.delay == 4
    with pytest.raises(kopf.PermanentError):
        handled("RLJob", 0, lambda: (_ for _ in ()).throw(kopf.PermanentError("no")))
