"""The loss and the advantages against an independent float64 implementation.

The reference below is written from the formulas (PPO's clipped surrogate, GRPO's group
normalisation with the unbiased std, truncated / masked importance weights, the k3 KL
estimator, token- and sequence-level aggregation) in plain Python floats; it imports
nothing from the code under test. Hypothesis draws the batches, including flat groups,
groups of two, single-token masks, empty rows and ratios far outside the clip range with
both signs of advantage.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kuberl.workloads.rl.advantages import group_advantages
from kuberl.workloads.rl.losses import policy_loss

EPS = 1e-6


def ref_advantages(rewards: list[float], groups: list[int], scale: bool) -> list[float]:
    out = []
    for r, g in zip(rewards, groups):
        members = [x for x, h in zip(rewards, groups) if h == g]
        n = len(members)
        if n < 2 or max(members) - min(members) <= 1e-6:
            out.append(0.0)
            continue
        mean = sum(members) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in members) / (n - 1))
        out.append((r - mean) / (std + EPS) if scale else r - mean)
    return out


def ref_loss(lp, old, beh, ref, mask, adv, weights, *, eps_low, eps_high, method, low, high, kl_coef, aggregation):
    per_row = []
    for i, row in enumerate(lp):
        values = []
        for t, logp in enumerate(row):
            if not mask[i][t]:
                continue
            a = adv[i]
            ratio = math.exp(logp - old[i][t])
            clipped = (a > 0 and ratio > 1 + eps_high) or (a < 0 and ratio < 1 - eps_low)
            value = -min(max(ratio, 1 - eps_low), 1 + eps_high) * a if clipped else -ratio * a
            rb = math.exp(old[i][t] - beh[i][t])
            if method == "truncate":
                value *= min(max(rb, low), high)
            elif method == "mask":
                value *= rb if low <= rb <= high else 0.0
            if kl_coef:
                d = ref[i][t] - logp
                value += kl_coef * (math.exp(d) - d - 1)
            if method == "mask" and not low <= rb <= high:
                value = 0.0  # a masked token is out of the loss, its KL term included
            values.append(value * weights[i])
        per_row.append(values)
    if aggregation == "token":
        n = sum(len(v) for v in per_row)
        return sum(sum(v) for v in per_row) / max(n, 1)
    rows = [sum(v) / len(v) for v in per_row if v]
    return sum(rows) / max(len(rows), 1)


@st.composite
def batches(draw):
    n_groups = draw(st.integers(1, 3))
    sizes = [draw(st.integers(2, 4)) for _ in range(n_groups)]
    groups = [g for g, s in enumerate(sizes) for _ in range(s)]
    rewards = []
    for s in sizes:
        if draw(st.booleans()):  # a flat group, fractional rewards included
            rewards += [draw(st.sampled_from([0.0, 1.0, 0.9, 2.3, 0.1]))] * s
        else:
            rewards += [draw(st.sampled_from([0.0, 0.25, 0.5, 0.9, 1.0])) for _ in range(s)]
    b, t = len(groups), draw(st.integers(1, 6))
    logp = st.floats(-6.0, -0.01)
    shift = st.floats(-3.0, 3.0)  # ratios from e^-3 to e^3: far outside any clip range
    lp = [[draw(logp) for _ in range(t)] for _ in range(b)]
    old = [[x + draw(shift) for x in row] for row in lp]
    beh = [[x + draw(shift) for x in row] for row in old]
    ref = [[x + draw(shift) for x in row] for row in lp]
    mask = [[draw(st.sampled_from([0, 1, 1])) for _ in range(t)] for _ in range(b)]
    if draw(st.booleans()):  # single-token masks
        mask = [[1 if j == draw(st.integers(0, t - 1)) else 0 for j in range(t)] for _ in range(b)]
    weights = [draw(st.sampled_from([1.0, 0.5, 0.25])) for _ in range(b)]
    return groups, rewards, lp, old, beh, ref, mask, weights


@settings(max_examples=300, deadline=None)
@given(batch=batches(), eps_low=st.sampled_from([0.0, 0.2, 1.0]), eps_high=st.sampled_from([0.0, 0.28, 10.0]),
       method=st.sampled_from(["none", "truncate", "mask"]), kl_coef=st.sampled_from([0.0, 0.1, 5.0]),
       aggregation=st.sampled_from(["token", "sequence"]), scale=st.booleans(),
       bounds=st.sampled_from([(0.0, 2.0), (0.5, 2.0), (0.8, 1.25)]))
def test_loss_matches_the_float64_reference(batch, eps_low, eps_high, method, kl_coef, aggregation, scale, bounds):
    groups, rewards, lp, old, beh, ref, mask, weights = batch
    adv_ref = ref_advantages(rewards, groups, scale)
    adv = group_advantages(torch.tensor(rewards), torch.tensor(groups), scale_by_std=scale)
    assert max(abs(a - b) for a, b in zip(adv.tolist(), adv_ref)) <= 1e-6
    f64 = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    out = policy_loss(f64(lp), torch.tensor(adv_ref, dtype=torch.float64), f64(mask), old_logprobs=f64(old),
                      behaviour_logprobs=f64(beh), eps_low=eps_low, eps_high=eps_high, aggregation=aggregation,
                      correction=method, correction_low=bounds[0], correction_high=bounds[1],
                      ref_logprobs=f64(ref), kl_coef=kl_coef, sample_weights=f64(weights))
    want = ref_loss(lp, old, beh, ref, mask, adv_ref, weights, eps_low=eps_low, eps_high=eps_high, method=method,
                    low=bounds[0], high=bounds[1], kl_coef=kl_coef, aggregation=aggregation)
    assert abs(float(out.loss) - want) <= 1e-6
