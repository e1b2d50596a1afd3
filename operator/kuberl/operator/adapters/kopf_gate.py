"""kopf's readiness gate without its wake-up storm.

Before kopf runs any handler it waits until every object of every indexed kind has been
indexed once: each object's worker makes an "indexed" toggle in one shared set when the
object is first listed, drops it once indexed, then waits for the whole set to be on. kopf
wakes every waiter on every make and drop, and each waiter re-checks the set: with N
objects listed at once that is N wake-ups per change, N changes, about N² in all. An
operator with 500 jobs watches about 10,000 objects (5,000 pods); a standby taking over, or
a restart, spent up to 3.5 minutes of its core in these wake-ups before it ran a handler
(py-spy: the loop in `Condition.notify_all` / `ToggleSet.wait_for`; failover 209 s
where other runs took 32 s).

A waiter only waits for the set's overall state, so waking it when a make or drop leaves
that state as it was changes nothing it could see. `install` makes kopf's toggle sets
wake their waiters only when a make or drop flips the overall state; a single toggle's
`turn_to` still wakes everyone, as before. The methods replaced are kopf's own
(`kopf._cogs.aiokits.aiotoggles.ToggleSet`), same signatures; tests/operator/adapters/
test_kopf_gate.py runs them against the installed kopf.
"""

from __future__ import annotations

from kopf._cogs.aiokits import aiotoggles


async def _make_toggle(self: aiotoggles.ToggleSet, __val: bool = False, *,
                       name: str | None = None) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        _wake_on_flip(self, before)
    return toggle


async def _drop_toggle(self: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.discard(toggle)
        _wake_on_flip(self, before)


async def _drop_toggles(self: aiotoggles.ToggleSet, toggles) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        _wake_on_flip(self, before)


def _wake_on_flip(toggle_set: aiotoggles.ToggleSet, before: bool) -> None:
    # is_on() is all() or any() over the toggles: it stops at the first toggle that
    # decides, which while objects are being listed is the first one it looks at.
    if toggle_set.is_on() != before:
        toggle_set._condition.notify_all()


def install() -> None:
    """Replace kopf's ToggleSet make/drop methods (idempotent)."""
    aiotoggles.ToggleSet.make_toggle = _make_toggle  # type: ignore[method-assign]
    aiotoggles.ToggleSet.drop_toggle = _drop_toggle  # type: ignore[method-assign]
    aiotoggles.ToggleSet.drop_toggles = _drop_toggles  # type: ignore[method-assign]
