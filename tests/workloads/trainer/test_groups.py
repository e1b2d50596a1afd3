"""Samples into whole groups (dynamic sampling drops flat ones), and how many prompts the
trainer keeps in flight so a batch still fills despite dropped groups."""

from __future__ import annotations

from types import SimpleNamespace

from kuberl.workloads.trainer.groups import GroupAssembler, in_flight_target


def sample(prompt: str, index: int, reward: float, size: int = 2, version: int = 0):
    return SimpleNamespace(prompt_id=prompt, group_id=f"{prompt}#0", sample_id=f"{prompt}#0/{index}", reward=reward,
                           policy_version=version, meta={"group_size": size}, failure=None)


def test_dynamic_sampling_drops_flat_groups_and_counts_the_keep_rate():
    asm = GroupAssembler(dynamic_sampling=True)
    assert asm.add(sample("p1", 0, 1.0)) is None
    assert asm.add(sample("p2", 0, 1.0)) is None
    assert asm.add(sample("p1", 0, 1.0)) is None  # a duplicate of a sample already held
    assert asm.add(sample("p1", 1, 0.0)) == "p1"  # completes a group with a learning signal
    assert asm.add(sample("p2", 1, 1.0)) == "p2"  # completes a flat group: answered, not kept
    assert (asm.kept, asm.dropped, asm.keep_rate) == (1, 1, 0.5)
    assert [len(g) for g in asm.ready] == [2]
    assert asm.add(sample("p1", 0, 0.0)) is None  # another attempt of an answered prompt is ignored
    off = GroupAssembler(dynamic_sampling=False)
    off.add(sample("q", 0, 1.0))
    off.add(sample("q", 1, 1.0))
    assert (off.kept, off.dropped) == (1, 0)


def _cfg(dynamic_sampling: bool, factor: float = 1.0, off_policy: int = 1, cap: int = 512):
    algorithm = SimpleNamespace(global_batch_size=64, dynamic_sampling=dynamic_sampling, over_sampling_factor=factor)
    return SimpleNamespace(algorithm=algorithm, buffer=SimpleNamespace(max_in_flight_prompts=cap),
                           max_off_policy_steps=off_policy)


def test_in_flight_target_over_samples_for_dropped_groups():
    # 64 samples a step = 8 groups of 8; enough for (1 + maxOffPolicySteps) steps.
    assert in_flight_target(_cfg(False), 8, None) == 16
    assert in_flight_target(_cfg(False, off_policy=0), 8, None) == 8
    # Dynamic sampling: 1.5x over-sampling, half the groups kept -> 8 * 1.5 / 0.5 * 2 = 48.
    assert in_flight_target(_cfg(True, 1.5), 8, 0.5) == 48
    assert in_flight_target(_cfg(True, 1.0), 8, 0.0) == 8 * 10 * 2  # the keep rate is floored at 0.1
    assert in_flight_target(_cfg(True, 16.0, cap=100), 8, 0.1) == 100  # never past buffer.maxInFlightPrompts
