"""kopf_reactor against the installed kopf: the pause and readiness states are the toggle sets
kopf hands each resource watcher, and the event queue is the one kopf sets in a handler's context."""

from __future__ import annotations

import asyncio
import inspect

from kopf._cogs.aiokits import aiotoggles
from kopf._core.engines import posting
from kopf._core.reactor import orchestration, queueing

from kuberl.operator.adapters import kopf_reactor


def test_kopf_hands_both_toggle_sets_to_each_resource_watcher_through_the_attribute_the_wrapper_replaces():
    # The orchestrator looks `queueing.watcher` up when it spawns a watcher and passes the sets by keyword.
    source = inspect.getsource(orchestration.spawn_missing_watchers)
    assert "queueing.watcher(" in source and "operator_paused=ensemble.operator_paused" in source \
        and "operator_indexed=ensemble.operator_indexed" in source
    assert set(inspect.signature(kopf_reactor._original_watcher).parameters) >= {"operator_paused", "operator_indexed",
                                                                                 "resource_indexed"}


def test_the_wrapper_remembers_the_sets_and_serving_and_indexed_follow_them(monkeypatch):
    monkeypatch.setattr(kopf_reactor, "_paused", None)
    monkeypatch.setattr(kopf_reactor, "_indexed", None)
    monkeypatch.setattr(queueing, "watcher", queueing.watcher)  # restored after the test
    assert kopf_reactor.serving() and kopf_reactor.indexed()

    async def drill():
        kopf_reactor.install()
        paused, indexed = aiotoggles.ToggleSet(any), aiotoggles.ToggleSet(all)
        listing = await indexed.make_toggle(False, name="rljobs@ns")
        peer = queueing.watcher(settings=None, resource=None, namespace=None,
                                processor=None)  # a peering watcher: no sets
        peer.close()
        coro = queueing.watcher(settings=None, resource=None, namespace=None, processor=None,
                                operator_paused=paused, operator_indexed=indexed)
        coro.close()  # kopf would run it; only the hand-over matters here
        assert kopf_reactor.serving() and not kopf_reactor.indexed()
        await listing.turn_to(True)
        assert kopf_reactor.indexed()
        peering = await paused.make_toggle(True, name="another replica leads")
        assert not kopf_reactor.serving()
        waiter = asyncio.create_task(kopf_reactor.until_serving())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await peering.turn_to(False)
        await asyncio.wait_for(waiter, 1)
        assert kopf_reactor.serving()

    asyncio.run(drill())


def test_the_event_queue_is_taken_from_a_handler_context_and_set_in_another(monkeypatch):
    monkeypatch.setattr(kopf_reactor, "_event_queue", None)
    assert not kopf_reactor.restore_event_queue()
    kopf_reactor.remember_event_queue()  # outside any handler: nothing to take
    assert kopf_reactor._event_queue is None

    async def handler_context():
        posting.event_queue_loop_var.set(asyncio.get_running_loop())
        posting.event_queue_var.set(queue)
        kopf_reactor.remember_event_queue()

    queue: asyncio.Queue = asyncio.Queue()
    asyncio.run(handler_context())

    async def elsewhere():
        assert kopf_reactor.restore_event_queue()
        assert posting.event_queue_var.get() is queue

    asyncio.run(elsewhere())
