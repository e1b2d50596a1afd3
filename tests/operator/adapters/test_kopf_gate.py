"""kopf's readiness gate with `adapters.kopf_gate` installed: the same answers to waiters,
one wake-up per change of the overall state instead of one per toggle made or dropped."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits.aiotoggles import ToggleSet

from kuberl.operator.adapters import kopf_gate

kopf_gate.install()


class CountingCondition(asyncio.Condition):
    def __init__(self) -> None:
        super().__init__()
        self.wakes = 0

    def notify_all(self) -> None:
        self.wakes += 1
        super().notify_all()


def test_waiters_of_the_indexing_gate_are_woken_once_when_the_last_object_is_indexed():
    async def scenario() -> tuple[int, int, bool]:
        gate = ToggleSet(all)
        gate._condition = CountingCondition()
        objects = [await gate.make_toggle(name=f"object-{i}") for i in range(300)]  # listed, not indexed yet
        released = 0

        async def worker() -> None:
            nonlocal released
            await gate.wait_for(True)
            released += 1

        workers = [asyncio.create_task(worker()) for _ in range(300)]
        await asyncio.sleep(0)
        for toggle in objects[:-1]:
            await gate.drop_toggle(toggle)
            await asyncio.sleep(0)
        still_held = released == 0 and not gate.is_on()
        await gate.drop_toggle(objects[-1])
        await asyncio.wait_for(asyncio.gather(*workers), 5)
        return released, gate._condition.wakes, still_held

    released, wakes, still_held = asyncio.run(scenario())
    # Held until the last object is indexed, then all released. kopf's own methods woke
    # every waiter on each of the 600 makes and drops.
    assert still_held and released == 300
    assert wakes == 2  # the first make (on -> off) and the last drop (off -> on)


def test_a_set_still_follows_its_toggles_turned_on_and_off():
    async def scenario() -> list[str]:
        paused = ToggleSet(any)  # as kopf's peering uses it: paused while any peer says so
        seen: list[str] = []
        peer = await paused.make_toggle(False, name="peer")

        async def watch(state: bool, label: str) -> None:
            await paused.wait_for(state)
            seen.append(label)

        on = asyncio.create_task(watch(True, "paused"))
        await asyncio.sleep(0)
        await peer.turn_to(True)
        await asyncio.wait_for(on, 5)
        off = asyncio.create_task(watch(False, "resumed"))
        await asyncio.sleep(0)
        await paused.drop_toggles([peer])  # the peer is gone: nobody pauses any more
        await asyncio.wait_for(off, 5)
        return seen

    assert asyncio.run(scenario()) == ["paused", "resumed"]
