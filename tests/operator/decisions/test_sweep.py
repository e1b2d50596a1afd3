"""The sweeper's schedule: spread first rounds, one round per object at a time, bounded starts, most overdue first."""

from __future__ import annotations

import itertools

from kuberl.operator.decisions.sweep import plan_tick, tick_period


def offsets(*values: float):
    it = itertools.cycle(values)
    return lambda: next(it)


def test_objects_seen_at_once_spread_their_first_rounds_over_one_interval():
    tick = plan_tick({}, ["a", "b", "c", "d"], running=(), now=100.0, interval_s=10.0, capacity=10,
                     first_offset=offsets(0.0, 0.25, 0.5, 0.75))
    assert tick.start == ("a",)  # offset 0: due at once
    assert tick.next_due == {"a": 110.0, "b": 102.5, "c": 105.0, "d": 107.5}


def test_a_due_object_starts_and_is_next_due_one_interval_later_gone_objects_leave():
    tick = plan_tick({"a": 99.0, "b": 120.0, "gone": 50.0}, ["a", "b"], running=(), now=100.0, interval_s=10.0,
                     capacity=10,
                     first_offset=offsets(0.5))
    assert tick.start == ("a",)
    assert tick.next_due == {"a": 110.0, "b": 120.0}


def test_a_round_still_running_is_not_started_again_and_stays_due():
    tick = plan_tick({"a": 90.0}, ["a"], running={"a"}, now=100.0, interval_s=10.0, capacity=10,
                     first_offset=offsets(0.5))
    assert tick.start == () and tick.next_due == {"a": 90.0}
    later = plan_tick(tick.next_due, ["a"], running=(), now=101.0, interval_s=10.0, capacity=10,
                      first_offset=offsets(0.5))
    assert later.start == ("a",) and later.next_due == {"a": 111.0}


def test_at_most_capacity_rounds_start_most_overdue_first_the_rest_wait():
    due = {"a": 95.0, "b": 80.0, "c": 90.0, "d": 99.0}
    tick = plan_tick(due, list(due), running=(), now=100.0, interval_s=10.0, capacity=2, first_offset=offsets(0.5))
    assert tick.start == ("b", "c")
    assert tick.next_due == {"a": 95.0, "b": 110.0, "c": 110.0, "d": 99.0}
    assert plan_tick(due, list(due), running=(), now=100.0, interval_s=10.0, capacity=0,
                     first_offset=offsets(0.5)).start == ()


def test_the_tick_is_half_the_shortest_interval_at_most_a_second():
    assert tick_period([10.0, 5.0]) == 1.0
    assert tick_period([1.0, 0.5]) == 0.25
