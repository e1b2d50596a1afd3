"""kopf_reactor against the installed kopf: the pause state is the toggle set kopf hands its
daemon killer, and the event queue is the one kopf sets in a handler's context."""

from __future__ import annotations

import asyncio
import inspect

from kopf._cogs.aiokits import aiotoggles
from kopf._core.engines import daemons, posting
from kopf._core.reactor import running

from kuberl.operator.adapters import kopf_reactor


def test_kopf_starts_its_daemon_killer_through_the_module_attribute_the_wrapper_replaces():
    # spawn_tasks looks `daemons.daemon_killer` up when it runs and passes the toggle set by keyword.
    source = inspect.getsource(running.spawn_tasks)
    assert "daemons.daemon_killer(" in source and "operator_paused=operator_paused" in source
    assert set(inspect.signature(kopf_reactor._original_killer).parameters) >= {"operator_paused", "settings", "memories"}


def test_the_wrapper_remembers_the_toggle_set_and_serving_follows_it(monkeypatch):
    monkeypatch.setattr(kopf_reactor, "_paused", None)
    monkeypatch.setattr(daemons, "daemon_killer", daemons.daemon_killer)  # restored after the test
    assert kopf_reactor.serving()

    async def drill():
        kopf_reactor.install()
        paused = aiotoggles.ToggleSet(any)
        coro = daemons.daemon_killer(settings=None, memories=None, operator_paused=paused)
        coro.close()  # kopf would run it; only the hand-over matters here
        assert kopf_reactor.serving()
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
