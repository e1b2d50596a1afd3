"""Custom reward functions run in a child process: a failure costs its sample, not the agent."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from kuberl.workloads.buffer.records import INFRA_FAILED, Trajectory
from kuberl.workloads.rl.batch import collate
from kuberl.workloads.rl.sampling import group_has_signal
from kuberl.workloads.episodes.rewards import PythonRewardRunner, RewardLoadError, score
from kuberl.workloads.spec import PythonReward, RewardSpec, python_entry_point_problem
from kuberl.workloads.trainer.groups import GroupAssembler

SAMPLE = {"prompt": "1+2=", "answer": "3"}


def runner(name: str, timeout: float = 10.0) -> PythonRewardRunner:
    return PythonRewardRunner(PythonReward(entry_point=f"tests.support.rewards:{name}", timeout_seconds=timeout))


async def test_a_reward_is_called_in_its_child_with_prompt_response_and_sample():
    r = runner("length")
    try:
        assert (await r.score("1+2=", "four", SAMPLE)).value == 4.0
        assert (await r.score("1+2=", "", SAMPLE)).value == 0.0
        assert r.restarts == 0
    finally:
        await r.close()


@pytest.mark.parametrize("name, failure", [
    ("raises", "reward raised ValueError: this reward always raises"),
    ("not_a_number", "not a finite number"),
    ("exits", "reward process exited"),
])
async def test_a_failing_reward_is_a_failure_of_its_sample_and_the_next_call_works(name, failure):
    r = runner(name)
    try:
        for _ in range(2):  # the child survives a raise; one that exited is started again
            scored = await r.score("p", "r", SAMPLE)
            assert scored.failure is not None and failure in scored.failure
    finally:
        await r.close()


async def test_a_hung_reward_is_abandoned_after_its_timeout_and_its_process_replaced():
    r = runner("hangs", timeout=0.5)
    try:
        t0 = time.monotonic()
        scored = await r.score("p", "r", SAMPLE)
        assert scored.failure == "reward timed out after 0.5 s"
        assert time.monotonic() - t0 < 30  # bounded: not the hour the function sleeps
        assert r.restarts == 1 and r.children == 0  # killed, not left running
    finally:
        await r.close()


async def test_a_hung_call_holds_one_child_while_the_others_score():
    r = runner("hangs_on_request", timeout=2.0)
    try:
        t0 = time.monotonic()
        hanging = asyncio.create_task(r.score("p", "hang", SAMPLE))
        await asyncio.sleep(0.5)
        values = [(await r.score("p", "x" * i, SAMPLE)).value for i in range(5)]
        assert values == [0.0, 1.0, 2.0, 3.0, 4.0] and not hanging.done()
        hung = await asyncio.gather(*(r.score("p", "hang", SAMPLE) for _ in range(3)), hanging)
        assert all(s.failure == "reward timed out after 2 s" for s in hung)
        assert time.monotonic() - t0 < 15  # four hangs side by side, not one after another
        assert r.restarts == 4 and (await r.score("p", "ok", SAMPLE)).value == 2.0
    finally:
        await r.close()


async def test_what_the_reward_prints_does_not_corrupt_its_answer():
    r = runner("noisy")
    try:
        assert [(await r.score("p", "r", SAMPLE)).value for _ in range(3)] == [0.5, 0.5, 0.5]
    finally:
        await r.close()


async def test_an_entry_point_that_cannot_load_is_a_wrong_spec_not_a_sample_failure():
    r = PythonRewardRunner(PythonReward(entry_point="tests.support.no_such_module:fn"))
    with pytest.raises(RewardLoadError, match="cannot be loaded: ModuleNotFoundError"):
        await r.score("p", "r", SAMPLE)


@pytest.mark.parametrize("entry_point",
                         ["os:system", "builtins:eval", "subprocess:getoutput", "json.decoder:py_scanstring",
                                         "importlib:import_module", "__main__:main"])
def test_standard_library_entry_points_are_refused(entry_point):
    assert "standard library" in python_entry_point_problem(entry_point)
    with pytest.raises(RewardLoadError, match="reward.python.entryPoint"):
        PythonRewardRunner(PythonReward(entry_point=entry_point))


def test_user_modules_are_allowed():
    assert python_entry_point_problem("tests.support.rewards:length") is None
    assert python_entry_point_problem("my_rewards.math:score") is None


async def test_score_marks_nothing_for_a_verifier_and_routes_python_rewards_to_the_child():
    verified = await score(RewardSpec(type="verifier", verifier={"name": "arithmetic"}), SAMPLE, "3")
    assert verified.value == 1.0 and verified.failure is None
    failed = await score(RewardSpec(type="python", python={"entryPoint": "tests.support.rewards:raises"}), SAMPLE, "3")
    assert failed.failure and failed.failure.startswith("reward raised")


def _traj(group: str, index: int, reward: float, failure: str | None = None) -> Trajectory:
    return Trajectory(sample_id=f"{group}/{index}", prompt_id=group, group_id=group, policy_version=0,
                      tokens=[1, 2, 3, 4], logprobs=[0, 0, -1, -1], loss_mask=[0, 0, 1, 1], reward=reward,
                      meta={"group_size": 4, **({INFRA_FAILED: failure} if failure else {})})


def test_failed_samples_are_masked_and_left_out_of_their_groups_statistics():
    group = [_traj("g", 0, 1.0), _traj("g", 1, 0.0), _traj("g", 2, 0.0, "reward raised"), _traj("g", 3, 1.0)]
    batch = collate([group])
    assert batch.mask[2].sum() == 0 and batch.mask[[0, 1, 3]].sum() == 6
    assert batch.advantages[2] == 0
    # The three scored samples alone: rewards 1, 0, 1 → mean 2/3, unbiased std 1/√3.
    expected = (torch.tensor([1.0, 0.0, 1.0]) - 2 / 3) / (torch.tensor([1.0, 0.0, 1.0]).std() + 1e-6)
    assert torch.allclose(batch.advantages[[0, 1, 3]], expected)


def test_dynamic_sampling_judges_a_group_by_its_scored_samples():
    # Without the failure the group has rewards 0 and 1; with it, only 1s are scored: no signal.
    group = [_traj("g", 0, 1.0), _traj("g", 1, 0.0, "timed out"), _traj("g", 2, 1.0), _traj("g", 3, 1.0)]
    assert not group_has_signal(group)
    assembler = GroupAssembler(dynamic_sampling=True)
    for t in group:
        assembler.add(t)
    assert assembler.dropped == 1 and not assembler.ready


def test_a_failure_survives_the_buffer_encoding():
    from kuberl.workloads.buffer.records import decode_trajectory, encode_trajectory

    t = _traj("g", 0, 0.0, "environment http://env: ServerDisconnectedError")
    assert decode_trajectory(encode_trajectory(t)).failure == t.failure
