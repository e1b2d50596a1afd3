"""metrics.jsonl rows as logger scalars (pure)."""

from __future__ import annotations

from kuberl.workloads.observe.scalars import GROUPS, histograms, scalars, tag


def test_every_numeric_field_is_a_scalar_under_its_group():
    row = {"step": 7, "time": 1.7e9, "mode": "colocated", "stage_name": "all", "resumed_from": None, "eval_step": 5,
           "reward_mean": 0.5, "kl": 0.01, "clip_frac": 0.1, "samples": 128, "stage": 1, "novel_thing": 3,
           "eval/held-out/pass@1": 0.4, "flag": True, "staleness_counts": {"0": 2, "1": 1}}
    assert scalars(row) == {"reward/reward_mean": 0.5, "loss/kl": 0.01, "ppo/clip_frac": 0.1,
                            "throughput/samples": 128.0,
                            "progress/stage": 1.0, "other/novel_thing": 3.0, "eval/held-out/pass@1": 0.4}


def test_groups_name_each_key_once():
    keys = [k for ks in GROUPS.values() for k in ks]
    assert len(keys) == len(set(keys))
    assert tag("eval/x/greedy") == "eval/x/greedy" and tag("reward_std") == "reward/reward_std"


def test_count_maps_become_histogram_samples():
    assert histograms({"staleness_counts": {"1": 2, "0": 3}}) == {"off_policy/staleness": [0.0, 0.0, 0.0, 1.0, 1.0]}
    assert histograms({"step": 1}) == {}
