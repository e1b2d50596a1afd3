"""The update both trainer backends run (rl.ppo), on the tiny torch model.

What the API promises and a step that recomputes its "old" logprobs before every update
cannot do: the ratio moves from a batch's second mini-batch on, the clip acts, the clip
epsilons and the KL term change the parameters, micro-batches and data-parallel ranks give
the one-batch result.
"""

from __future__ import annotations

import copy
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kuberl.workloads.buffer.records import Trajectory
from kuberl.workloads.buffer.staleness import staleness_rule
from kuberl.workloads.policy.tiny.model import seeded_model
from kuberl.workloads.policy.tiny.train import TinyBackend, make_optimizer
from kuberl.workloads.rl.batch import collate
from kuberl.workloads.rl.advantages import group_advantages
from kuberl.workloads.rl.losses import policy_loss
from kuberl.workloads.rl.ppo import RolloutBatch, ppo_update
from kuberl.workloads.spec import AlgorithmSpec, StalenessHandling
from kuberl.workloads.trainer.groups import staleness_weights


def make_batch(n: int = 8, length: int = 12, seed: int = 0, dtype=torch.float32) -> RolloutBatch:
    """Random responses of varied length (right-padded), two groups' worth of rewards."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 40, (n, length), generator=g)
    lengths = torch.randint(5, length + 1, (n,), generator=g)
    valid = torch.arange(length)[None] < lengths[:, None]
    mask = (valid & (torch.arange(length)[None] >= 4)).to(dtype)
    rewards = torch.randint(0, 2, (n,), generator=g).double()
    return RolloutBatch(ids=ids * valid, valid=valid, mask=mask, behaviour=torch.zeros(n, length, dtype=dtype),
                        advantages=group_advantages(rewards, group_size=n // 2).to(dtype),
                        weights=torch.ones(n, dtype=dtype),
                        rewards=rewards)


def algo(**kw) -> AlgorithmSpec:
    base = dict(group_size=2, global_batch_size=4, rollout_batch_size=8, learning_rate=3e-2,
                off_policy_correction={"method": "none"})
    return AlgorithmSpec(**{**base, **kw})


def run(settings: AlgorithmSpec, batch: RolloutBatch, seed: int = 1, dtype=torch.float32, reference=None):
    model = seeded_model(seed).to(dtype)
    backend = TinyBackend(model, make_optimizer(model, settings), settings.grad_clip)
    ref = TinyBackend(reference.to(dtype)) if reference is not None else None
    steps = [r.metrics for r in ppo_update(backend, batch, settings, reference=ref)]
    return model, steps


def params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_ratio_moves_and_clip_acts_on_the_second_mini_batch():
    _, steps = run(algo(clip_eps_low=0.01, clip_eps_high=0.01), make_batch())
    assert len(steps) == 2
    first, second = steps
    assert first["ratio_dev_mean"] == 0.0 and first["clip_frac"] == 0.0  # proximal = current weights
    assert second["ratio_dev_mean"] > 1e-3 and second["clip_frac"] > 0.0


def test_epochs_pass_over_the_batch_again():
    _, steps = run(algo(epochs=2), make_batch())
    assert len(steps) == 4 and [s["ratio_dev_mean"] > 0 for s in steps] == [False, True, True, True]


def test_clip_epsilons_change_the_parameters():
    batch = make_batch()
    tight, _ = run(algo(clip_eps_low=0.01, clip_eps_high=0.01), batch)
    loose, _ = run(algo(clip_eps_low=1.0, clip_eps_high=10.0), batch)
    assert (params(tight) - params(loose)).abs().max() > 1e-6


def test_kl_coef_changes_the_loss_parameters_and_reported_kl():
    batch = make_batch()
    reference = seeded_model(5)  # differs from the policy, so the KL is not 0 at the first step
    plain, plain_steps = run(algo(kl_coef=0.0), batch)
    with_kl, kl_steps = run(algo(kl_coef=1.0), batch, reference=copy.deepcopy(reference))
    assert "kl" not in plain_steps[0] and kl_steps[0]["kl"] > 0.01
    assert kl_steps[0]["loss"] == pytest.approx(plain_steps[0]["loss"] + kl_steps[0]["kl"], rel=1e-5)
    assert (params(plain) - params(with_kl)).abs().max() > 1e-6
    with pytest.raises(ValueError, match="reference"):
        run(algo(kl_coef=1.0), batch)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_flat_groups_get_exactly_zero_advantage(dtype):
    for value, size in ((0.9, 3), (2.3, 16), (0.1, 2), (1000.3, 5)):
        adv = group_advantages(torch.full((size,), value, dtype=dtype), group_size=size)
        assert adv.dtype == dtype and torch.equal(adv, torch.zeros(size, dtype=dtype)), (value, size, adv)
    mixed = group_advantages(torch.tensor([0.9, 0.9, 0.9, 0.0, 1.0, 1.0], dtype=dtype), group_size=3)
    assert torch.equal(mixed[:3], torch.zeros(3, dtype=dtype)) and (mixed[3:] != 0).all()


def test_advantages_keep_float64_and_integer_rewards_give_float32():
    rewards = torch.tensor([0.1, 0.2, 0.3, 0.7], dtype=torch.float64)
    adv = group_advantages(rewards, group_size=4)
    assert adv.dtype == torch.float64
    centred = rewards - rewards.mean()
    assert torch.equal(adv, centred / (centred.std() + 1e-6))  # exact in float64, no float32 round trip
    assert group_advantages(torch.tensor([0, 1, 1, 0]), group_size=4).dtype == torch.float32


@pytest.mark.parametrize("span", [0.0, 1e-9, 5e-7, 1e-6, 1.1e-6, 1e-4, 1.0])
def test_dynamic_sampling_keeps_exactly_the_groups_with_nonzero_advantages(span):
    from kuberl.workloads.rl.sampling import has_signal

    rewards = [0.5, 0.5 + span, 0.5]
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float64), group_size=3)
    assert has_signal(rewards) == bool((adv != 0).any()), (span, adv)


def test_masked_tokens_get_no_gradient_from_the_kl_term_either():
    g = torch.Generator().manual_seed(3)
    logp = (-torch.rand(2, 6, generator=g, dtype=torch.float64)).requires_grad_()
    old = logp.detach().clone()
    behaviour = old.clone()
    behaviour[0, :3] -= 5.0  # ratio π_old/π_behaviour = e^5: outside the band, masked
    out = policy_loss(logp, torch.tensor([1.0, -1.0], dtype=torch.float64), torch.ones(2, 6, dtype=torch.float64),
                      old_logprobs=old, behaviour_logprobs=behaviour, correction="mask",
                      correction_low=0.5, correction_high=2.0,
                      ref_logprobs=old - 0.3, kl_coef=0.5, kl_estimator="k3")
    out.loss.backward()
    assert out.sums["is_masked"] == 3
    assert torch.equal(logp.grad[0, :3], torch.zeros(3, dtype=torch.float64))
    assert (logp.grad[0, 3:] != 0).all() and (logp.grad[1] != 0).all()


def test_dr_grpo_scaling_leaves_centred_rewards():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4, scale_by_std=False)
    assert adv.tolist() == [0.75, -0.25, -0.25, -0.25]


def test_clip_eps_low_zero_gives_the_full_gradient_at_ratio_one():
    for adv in (1.0, -1.0):
        grads = []
        for eps_low, eps_high in ((0.0, 0.0), (0.2, 0.28)):
            lp = torch.tensor([[-0.7, -1.2]], requires_grad=True)
            policy_loss(lp, torch.tensor([adv]), torch.ones(1, 2), old_logprobs=lp.detach(),
                        eps_low=eps_low, eps_high=eps_high).loss.backward()
            grads.append(lp.grad.clone())
        # d(−ratio·A)/d logp at ratio 1 is −A per token, over 2 tokens.
        assert torch.equal(grads[0], grads[1]) and torch.allclose(grads[0], torch.full((1, 2), -adv / 2))


def _trajectory(sample: str, group: str, version: int, reward: float) -> Trajectory:
    return Trajectory(sample_id=sample, prompt_id=group, group_id=group, policy_version=version,
                      tokens=np.array([1, 5, 6, 7]), logprobs=np.array([0.0, -1.0, -1.0, -1.0], dtype=np.float32),
                      loss_mask=np.array([0, 1, 1, 1]), reward=reward, meta={"group_size": 2})


def test_staleness_weights_reach_the_loss_of_their_samples():
    # Groups assembled from two fetches, generated by versions 9 and 7; the trainer is at 10.
    fresh = [_trajectory("a/0", "a", 9, 1.0), _trajectory("a/1", "a", 9, 0.0)]
    stale = [_trajectory("b/0", "b", 7, 1.0), _trajectory("b/1", "b", 7, 0.0)]
    rule = staleness_rule(StalenessHandling(policy="downweight", decay=0.5, min_weight=0.05))
    weights = staleness_weights(fresh + stale, 10, 2, rule)
    assert weights == {"a/0": 1.0, "a/1": 1.0, "b/0": 0.5, "b/1": 0.5}  # lag 3: one past the bound
    assert staleness_weights(stale, 10, 2, staleness_rule(StalenessHandling()))["b/0"] == 0.0  # drop
    assert staleness_weights(stale, 14, 2, rule)["b/0"] == 0.0  # 0.5**5 < minWeight 0.05
    batch = collate([fresh, stale], weights)
    assert batch.weights.tolist() == [1.0, 1.0, 0.5, 0.5]
    # The stale group's share of the loss gradient is halved, the fresh group's untouched.
    lp = batch.behaviour.clone().requires_grad_(True)
    policy_loss(lp, batch.advantages, batch.mask, old_logprobs=lp.detach(),
                sample_weights=batch.weights).loss.backward()
    unweighted = batch.behaviour.clone().requires_grad_(True)
    policy_loss(unweighted, batch.advantages, batch.mask, old_logprobs=unweighted.detach()).loss.backward()
    assert torch.equal(lp.grad[:2], unweighted.grad[:2]) and torch.allclose(lp.grad[2:], 0.5 * unweighted.grad[2:])


@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_micro_batches_give_the_one_batch_update(aggregation):
    batch = make_batch(dtype=torch.float64)
    whole, whole_steps = run(algo(loss_aggregation=aggregation), batch, dtype=torch.float64)
    split, split_steps = run(algo(loss_aggregation=aggregation, micro_batch_size=1), batch, dtype=torch.float64)
    for a, b in zip(whole_steps, split_steps, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-12 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-12
    assert (params(whole) - params(split)).abs().max() < 1e-12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dp_worker(rank: int, world: int, port: int, out: str, aggregation: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    batch = make_batch(dtype=torch.float64)
    # Each rank holds every other sample: its half of every mini-batch.
    settings = algo(loss_aggregation=aggregation, global_batch_size=2, rollout_batch_size=4)
    mine = batch.rows(torch.arange(rank, len(batch), world))
    model = seeded_model(1).to(torch.float64)
    backend = TinyBackend(model, make_optimizer(model, settings), settings.grad_clip, dp_group=dist.group.WORLD)
    steps = [r.metrics for r in ppo_update(backend, mine, settings)]
    if rank == 0:
        torch.save({"params": params(model), "losses": [s["loss"] for s in steps],
                    "extremes": [(s["ratio_min"], s["ratio_max"]) for s in steps]}, out)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_two_data_parallel_ranks_give_the_one_rank_update(tmp_path, aggregation):
    out = str(tmp_path / "dp.pt")
    mp.start_processes(_dp_worker, args=(2, _free_port(), out, aggregation), nprocs=2, join=True, start_method="spawn")
    got = torch.load(out)
    # One rank, the same global mini-batches: samples 0–3 (ranks' first halves), then 4–7.
    single, steps = run(algo(loss_aggregation=aggregation, global_batch_size=4, rollout_batch_size=8),
                        make_batch(dtype=torch.float64), dtype=torch.float64)
    assert len(got["losses"]) == len(steps) == 2
    assert max(abs(a - s["loss"]) for a, s in zip(got["losses"], steps, strict=True)) < 1e-12
    assert (got["params"] - params(single)).abs().max() < 1e-12
    # The ratio extremes are the whole mini-batch's, not rank 0's half: the second step's
    # ratios moved, and they differ between the ranks' halves.
    want = [(s["ratio_min"], s["ratio_max"]) for s in steps]
    assert want[1][0] < want[1][1]
    flat = lambda pairs: [x for pair in pairs for x in pair]  # noqa: E731
    assert flat(got["extremes"]) == pytest.approx(flat(want), rel=0, abs=1e-12)
