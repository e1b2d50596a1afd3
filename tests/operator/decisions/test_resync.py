"""The per-child assertion cache that keeps timer rounds from re-creating every child (pure)."""

from __future__ import annotations

from kuberl.operator.decisions.resync import EnsureCache


def test_fresh_only_for_the_same_digest_within_the_period():
    c = EnsureCache(period_s=60)
    assert not c.fresh("uid", "ConfigMap/j-config", "d1", now=0)
    c.asserted("uid", "ConfigMap/j-config", "d1", now=0)
    assert c.fresh("uid", "ConfigMap/j-config", "d1", now=59)
    assert not c.fresh("uid", "ConfigMap/j-config", "d2", now=1), "a changed manifest is asserted at once"
    assert not c.fresh("uid", "ConfigMap/j-config", "d1", now=60), "and everything again once per period"
    assert not c.fresh("other", "ConfigMap/j-config", "d1", now=1)


def test_invalidate_one_child_or_all_of_an_owner():
    c = EnsureCache(period_s=60)
    for child in ("a", "b"):
        c.asserted("uid", child, "d", now=0)
    c.asserted("uid2", "a", "d", now=0)
    c.invalidate("uid", "a")
    assert not c.fresh("uid", "a", "d", now=1) and c.fresh("uid", "b", "d", now=1)
    c.invalidate("uid")
    assert not c.fresh("uid", "b", "d", now=1) and c.fresh("uid2", "a", "d", now=1)
