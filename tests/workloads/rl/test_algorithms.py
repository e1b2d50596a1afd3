"""Algorithms against hand-computed values."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from kuberl.workloads.rl.advantages import group_advantages
from kuberl.workloads.rl.curriculum import CurriculumState, Stage, curriculum_step
from kuberl.workloads.rl.losses import (
    aggregate,
    importance_weights,
    kl_penalty,
    policy_loss,
)
from kuberl.workloads.rl.sampling import has_signal

log = math.log


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


def test_group_advantages_hand_computed():
    # Group 1: mean 0.5, unbiased std sqrt(1/3) → ±0.5·sqrt(3) = ±0.866025. Group 2 is flat → 0.
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    a = 0.5 * math.sqrt(3)
    want = [a, -a, -a, a, 0, 0, 0, 0]
    assert close(group_advantages(r, group_size=4, eps=0.0), want)
    # Same groups given by id, interleaved and with string ids.
    ids = ["x", "y", "x", "y", "x", "y", "x", "y"]
    r2 = torch.tensor([1.0, 2.0, 0.0, 2.0, 0.0, 2.0, 1.0, 2.0])
    assert close(group_advantages(r2, ids, eps=0.0), [a, 0, -a, 0, -a, 0, a, 0])
    assert close(group_advantages(r, group_size=4, scale_by_std=False), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    assert close(group_advantages(torch.tensor([3.0, 1.0]), [7, 8]), [0.0, 0.0])  # groups of one
    with pytest.raises(ValueError):
        group_advantages(r, group_size=3)


def test_aggregation_token_vs_sequence():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [5.0, 5.0, 5.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert close(aggregate(v, m, "token"), (1 + 2 + 3 + 4) / 4)  # 2.5
    assert close(aggregate(v, m, "sequence"), (2 + 4) / 2)  # 3; the empty row is skipped
    assert close(aggregate(v, m, "token", denominator=8), 10 / 8)  # micro-batch of a larger batch
    with pytest.raises(ValueError):
        aggregate(v, m, "median")


def test_clipped_loss_hand_computed():
    # ratios 1.5, 0.5 (and a masked 1.0); eps_low 0.2, eps_high 0.28.
    lp = torch.tensor([[log(1.5), log(0.5), 0.0]], requires_grad=True)
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1, 1, 0]])
    pos = policy_loss(lp, torch.tensor([1.0]), mask, old_logprobs=old)
    # A=+1: -min(1.5, 1.28) = -1.28; -min(0.5, 0.8) = -0.5 → mean -0.89
    assert close(pos.loss, -0.89)
    assert pos.sums["clipped"] / pos.sums["tokens"] == 0.5
    neg = policy_loss(lp, torch.tensor([-1.0]), mask, old_logprobs=old)
    # A=-1: -min(-1.5, -1.28) = 1.5; -min(-0.5, -0.8) = 0.8 → mean 1.15
    assert close(neg.loss, 1.15)
    neg.loss.backward()
    # d/dlp of 1.5·ratio-branch (unclipped) = ratio/2 = 0.75; clipped 0.8 is constant → 0.
    assert close(lp.grad, [[0.75, 0.0, 0.0]])


def test_sequence_vs_token_weighting_in_loss():
    lp = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    adv = torch.tensor([1.0, -1.0])
    # per-token: -1 ×4 for row 0, +1 ×1 for row 1.
    assert close(policy_loss(lp, adv, mask, old_logprobs=lp.detach()).loss, (-4 + 1) / 5)
    assert close(policy_loss(lp, adv, mask, old_logprobs=lp.detach(), aggregation="sequence").loss, 0.0)


def test_kl_estimators_and_importance_weights_hand_computed():
    lp, ref = torch.tensor(log(0.5)), torch.tensor(0.0)  # d = log 2
    assert close(kl_penalty(lp, ref, "k3"), 2 - log(2) - 1)  # 0.306853
    assert close(kl_penalty(lp, ref, "k2"), 0.5 * log(2) ** 2)
    assert close(kl_penalty(lp, ref, "k1"), -log(2))
    assert close(kl_penalty(torch.tensor(-1.0), torch.tensor(-1.0)), 0.0)
    old, beh = torch.tensor([log(0.9), log(0.3), log(0.3)]), torch.tensor([log(0.3), log(0.6),
                                                                           log(0.3)])  # ratios 3, 0.5, 1
    assert close(importance_weights(old, beh, "truncate", 0.0, 2.0), [2.0, 0.5, 1.0])
    assert close(importance_weights(old, beh, "truncate", 0.8, 2.0), [2.0, 0.8, 1.0])
    assert close(importance_weights(old, beh, "mask", 0.8, 2.0), [0.0, 0.0, 1.0])
    assert close(importance_weights(old, beh, "none", 0.8, 2.0), [1.0, 1.0, 1.0])


def test_loss_with_tis_kl_and_sample_weights():
    lp = torch.tensor([[log(0.5), log(0.5)]])
    behaviour = torch.tensor([[log(0.25), log(1.0)]])  # old/behaviour = 2 → capped 1.5; 0.5
    ref = torch.zeros(1, 2)
    out = policy_loss(lp, torch.tensor([1.0]), torch.ones(1, 2), old_logprobs=lp, behaviour_logprobs=behaviour,
                      correction="truncate", correction_high=1.5, ref_logprobs=ref, kl_coef=0.1,
                      sample_weights=torch.tensor([0.5]))
    k3 = 2 - log(2) - 1
    want = 0.5 * ((-1.5 + 0.1 * k3) + (-0.5 + 0.1 * k3)) / 2
    assert close(out.loss, want)
    assert close(out.sums["is_weight"] / 2, 1.0) and close(out.sums["kl"] / 2, k3)
    with pytest.raises(ValueError, match="reference"):
        policy_loss(lp, torch.tensor([1.0]), torch.ones(1, 2), old_logprobs=lp, kl_coef=0.1)


def test_has_signal():
    assert has_signal([0, 1]) and not has_signal([1, 1]) and not has_signal([1])


def test_curriculum_switches_on_steps_then_pass_rate():
    stages = [Stage("medium", until_steps=3), Stage("hard", until_pass_rate=0.5, window=2), Stage("final")]
    s = CurriculumState()
    for step in (1, 2):
        s = curriculum_step(stages, s, step, pass_rate=0.0)
        assert s.stage == 0
    s = curriculum_step(stages, s, 3, pass_rate=0.0)
    assert (s.stage, s.stage_start_step, s.recent_pass_rates) == (1, 3, ())
    s = curriculum_step(stages, s, 4, pass_rate=0.9)
    assert s.stage == 1  # one lucky batch: window not full
    s = curriculum_step(stages, s, 5, pass_rate=0.2)
    assert (s.stage, s.stage_start_step) == (2, 5)  # mean(0.9, 0.2) = 0.55 ≥ 0.5
    for step in range(6, 20):
        s = curriculum_step(stages, s, step, pass_rate=1.0)
    assert s.stage == 2 and len(s.recent_pass_rates) == 4  # last stage runs to the end


def test_stage_from_jobspec_shape():
    spec = SimpleNamespace(name="hard", samples_per_prompt=64, max_response_length=None,
                           until=SimpleNamespace(steps=None, pass_rate=0.7, window=8))
    assert Stage.from_spec(spec) == Stage("hard", None, 0.7, 8, 64, None)
    last = SimpleNamespace(name="last", until=None)
    assert Stage.from_spec(last).until_steps is None
