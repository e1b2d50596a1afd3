"""Unit tests of the local workload pieces: tiny model, engine, tasks, AgentEnv server, runner helpers."""

from __future__ import annotations

import random

import aiohttp
import pytest
import torch
from aiohttp import web

from kuberl.operator.local.report import summarise
from kuberl.workloads.agentenv.server import EnvServer, EnvSettings, sample_latency
from kuberl.workloads.buffer.records import Prompt
from kuberl.workloads.engines.base import GenerationRequest
from kuberl.workloads.engines.batching import BatchingEngine
from kuberl.workloads.engines.torch_engine import TorchEngine
from kuberl.workloads.policy.tiny.model import TinyConfig, seeded_model, token_logprobs
from tests.support.tiny import tiny_tokenizer
from kuberl.workloads.trainer.warm_start import noisy_target
from kuberl.workloads.rl.losses import aggregate
from kuberl.workloads.episodes.generate import SamplingSettings, env_episode
from kuberl.workloads.tasks.calculator import calculate, calculator_step
from kuberl.workloads.tasks.datasets import arithmetic_problems, filter_problems

torch.set_num_threads(1)
TOK = tiny_tokenizer()


def test_model_uses_qwen2_parameter_names_and_config():
    model = seeded_model(0)
    names = set(model.state_dict())
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
            "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias",
            "model.layers.1.mlp.gate_proj.weight", "model.layers.1.post_attention_layernorm.weight"} <= names
    hf = model.config.to_hf()
    assert hf["architectures"] == ["Qwen2ForCausalLM"] and hf["num_key_value_heads"] < hf["num_attention_heads"]
    assert TinyConfig.from_hf(hf) == model.config


def test_engine_logprobs_match_the_trainers_recomputation():
    model = seeded_model(1)
    engine = TorchEngine(model, seed=3)
    prompts = [TOK.encode_prompt({"prompt": "3+4="}),
               TOK.encode_prompt({"prompt": "12+9="})]  # different lengths: left padding
    outs = engine.generate([GenerationRequest(p, n=3, max_new_tokens=5, stop_ids=TOK.stop_ids) for p in prompts])
    for p, group in zip(prompts, outs, strict=True):
        assert len(group) == 3
        for c in group:
            ids = torch.tensor([p + c.token_ids])
            lp = token_logprobs(model, ids, torch.ones_like(ids, dtype=torch.bool))[0, len(p):]
            assert torch.allclose(lp, torch.tensor(c.logprobs), atol=1e-4)


def test_engine_weight_swap_tags_the_new_version():
    engine = TorchEngine(seeded_model(0), version=0, seed=0)
    engine.load_state_dict(seeded_model(5).state_dict(), version=7)
    (group,) = engine.generate([GenerationRequest(TOK.encode_prompt({"prompt": "1+1="}), n=2, max_new_tokens=3,
                                                  stop_ids=TOK.stop_ids)])
    assert all(c.policy_version == 7 for c in group)


def test_arithmetic_problems_and_difficulty():
    problems = arithmetic_problems(digits=1)
    assert len(problems) == 100 and len({p.prompt for p in problems}) == 100
    easy = filter_problems(problems, None, None, 1)
    assert all(int(p.answer) < 10 for p in easy) and len(easy) == 55


def test_warm_start_targets_are_near_but_not_the_answer_on_average():
    rng = random.Random(0)
    targets = [int(noisy_target("9", rng)) for _ in range(2000)]
    assert min(targets) == 5 and max(targets) == 13
    assert 0.07 < sum(t == 9 for t in targets) / len(targets) < 0.16


def test_calculator_tool_turns():
    assert calculate("12*34") == "408" and calculate("import os") == "error"
    first = calculator_step("c:12*34", "413", turn=0)
    assert not first.done and first.observation == "=408\n"
    assert calculator_step("413", "413", turn=1).reward == 1.0


def test_latency_distributions_have_the_median_asked_for():
    rng = random.Random(0)
    for dist in ("lognormal", "pareto"):
        xs = sorted(sample_latency(dist, 0.2, 1.0, rng) for _ in range(4001))
        assert 0.17 < xs[2000] < 0.23, dist
        assert xs[-40] > 5 * xs[2000], f"{dist} tail is not heavy"


async def _serve(settings: EnvSettings):
    runner = web.AppRunner(EnvServer(settings).app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


async def test_agentenv_refuses_beyond_its_concurrency_limit():
    runner, url = await _serve(EnvSettings(task="arithmetic", concurrency=2))
    try:
        async with aiohttp.ClientSession() as s:
            codes = []
            for _ in range(3):
                async with s.post(f"{url}/episodes", json={"prompt": "1+1=", "answer": "2"}) as r:
                    codes.append(r.status)
            assert codes == [200, 200, 429]
    finally:
        await runner.cleanup()


async def test_agentenv_times_out_slow_episodes():
    runner, url = await _serve(EnvSettings(task="arithmetic", episode_timeout_s=0.2, latency="lognormal",
                                           latency_median_s=5.0, latency_tail=0.1))
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{url}/episodes", json={"prompt": "1+1=", "answer": "2"}) as r:
                eid = (await r.json())["episode_id"]
            async with s.post(f"{url}/episodes/{eid}/step", json={"action": "2"}) as r:
                body = await r.json()
            assert body["done"] and body["timed_out"] and body["reward"] == 0.0
    finally:
        await runner.cleanup()


async def test_multi_turn_episode_against_the_calculator_env():
    runner, url = await _serve(EnvSettings(task="calculator-tool"))
    engine = BatchingEngine(TorchEngine(seeded_model(0), seed=0))
    try:
        async with aiohttp.ClientSession() as s:
            prompt = Prompt("p1", {"prompt": "12*34+5=", "answer": "413"}, n_samples=1)
            t = await env_episode(engine, s, url, prompt, 0, SamplingSettings(8, 1.0), TOK)
        assert t.reward in (0.0, 1.0) and t.meta["turns"] >= 1
        assert t.loss_mask.sum() > 0 and t.loss_mask[: len("12*34+5=") + 1].sum() == 0  # the prompt is not trained on
    finally:
        await engine.stop()
        await runner.cleanup()


def test_runner_helpers():
    from kuberl.workloads.observe.step_row import StepRow

    rows = [StepRow(step=i, policy_version=i, reward_mean=i / 10, samples_trained=8 * i, samples_per_s=4.0,
                    elapsed_s=float(i))
            for i in range(1, 11)]
    s = summarise(rows, window=2)
    assert s["reward_start"] == pytest.approx(0.15) and s["reward_end"] == pytest.approx(0.95) and s["steps"] == 10



def test_reward_window_and_moving_average():
    from kuberl.operator.local.report import moving_average, reward_window

    assert reward_window(10) == 5 and reward_window(500) == 25
    assert moving_average([0.0, 1.0, 1.0, 1.0], 2) == [0.0, 0.5, 1.0, 1.0]


# ---- manifest switches reach the trainer: curriculum stages and loss aggregation ------------


def _tiny_trainer(tmp_path, algorithm: dict | None = None, **spec_changes):
    """The trainer of examples/tiny-cpu.yaml with ``spec_changes``, mapped from the manifest as
    `kuberl run` and the operator do. No servers: S3 clients only connect when used."""
    from kuberl.workloads.trainer.trainer import Trainer

    return Trainer(_tiny_config(tmp_path, algorithm, **spec_changes))


def _tiny_config(tmp_path, algorithm: dict | None = None, **spec_changes):
    """The workload config of `_tiny_trainer`."""
    from pathlib import Path

    import yaml

    from tests.support.objects import workload_config_for

    doc = yaml.safe_load((Path(__file__).resolve().parents[3] / "examples" / "tiny-cpu.yaml").read_text())
    spec = doc["spec"]
    spec["algorithm"].update({"globalBatchSize": 16, "rolloutBatchSize": 16, **(algorithm or {})})
    spec.update(spec_changes)
    return workload_config_for(spec, "switches", nats_url="nats://127.0.0.1:1", s3_endpoint="http://127.0.0.1:1",
                               output_dir=str(tmp_path / "out"))


def _answered(tr, prompts, pass_all: bool, response_len=lambda i: 2):
    """One group per prompt as a rollout agent would send it: prompt tokens, then a response
    whose behaviour logprobs are recorded; reward 1 for every sample when ``pass_all``, else
    only for the first of each group (a learning signal, pass rate 1/group size)."""
    from kuberl.workloads.buffer.records import Trajectory

    groups = []
    for p in prompts:
        ids = TOK.encode_prompt({"prompt": p.data["prompt"]})
        group = []
        for i in range(p.n_samples):
            resp = TOK.encode(p.data["answer"][:1] * response_len(i))
            n = len(ids) + len(resp)
            mask = [0] * len(ids) + [1] * len(resp)
            group.append(Trajectory(
                sample_id=f"{p.msg_id}/{i}", prompt_id=p.prompt_id, group_id=p.group_id,
                policy_version=tr.progress.version, tokens=ids + resp, logprobs=[-1.5 * m for m in mask],
                loss_mask=mask, reward=1.0 if pass_all or i == 0 else 0.0, meta={"group_size": p.n_samples}))
            assert len(group[-1]) == n
        groups.append(group)
    return groups


def _step(tr, pass_all: bool) -> dict:
    """What both training loops do per step: take the current stage's prompts, train on their groups."""
    stage = tr.progress.curriculum.stage
    prompts = tr.prompts.take(tr.cfg.algorithm.global_batch_size // tr.prompts.group_size(stage), stage)
    (row,) = tr.train(_answered(tr, prompts, pass_all))  # rolloutBatchSize = globalBatchSize: one step
    return row


TWO_STAGES = {"stages": [
    {"name": "medium", "difficulty": {"max": 1}, "samplesPerPrompt": 4, "maxResponseLength": 3},
    {"name": "hard", "samplesPerPrompt": 8},
]}


def test_two_stage_curriculum_switches_by_step_in_the_trainer_and_feeder(tmp_path):
    from kuberl.workloads.trainer.groups import in_flight_target

    curriculum = {"stages": [{**TWO_STAGES["stages"][0], "until": {"steps": 3}}, TWO_STAGES["stages"][1]]}
    tr = _tiny_trainer(tmp_path, curriculum=curriculum)
    medium = tr.prompts.take(4, 0)
    assert all(p.n_samples == 4 and p.stage == 0 and float(p.data["difficulty"]) <= 1 for p in medium)
    assert tr.prompts.sampling(0).max_new_tokens == 3
    assert in_flight_target(tr.cfg, tr.prompts.group_size(0), None) == 2 * 16 // 4
    rows = [_step(tr, pass_all=False) for _ in range(5)]
    assert [r.stage_name for r in rows] == ["medium", "medium", "hard", "hard", "hard"]
    assert [r.stage for r in rows] == [0, 0, 1, 1, 1]
    assert tr.progress.curriculum.stage_start_step == 3
    # From the switch on, the feeder hands out the hard stage: all problems, larger groups.
    hard = tr.prompts.take(40, tr.progress.curriculum.stage)
    assert all(p.n_samples == 8 and p.stage == 1 for p in hard)
    assert max(float(p.data["difficulty"]) for p in hard) == 2
    assert tr.prompts.sampling(1).max_new_tokens == tr.cfg.algorithm.max_response_length
    assert in_flight_target(tr.cfg, tr.prompts.group_size(1), None) == 2 * 16 // 8


def test_two_stage_curriculum_switches_by_pass_rate_only_on_a_full_window(tmp_path):
    curriculum = {"stages": [{**TWO_STAGES["stages"][0], "until": {"passRate": 0.6, "window": 3}},
                             TWO_STAGES["stages"][1]]}
    tr = _tiny_trainer(tmp_path, curriculum=curriculum)
    low = [_step(tr, pass_all=False) for _ in range(4)]  # pass rate 1/4 per step: stays
    assert [r.pass_rate for r in low] == [0.25] * 4 and {r.stage for r in low} == {0}
    high = [_step(tr, pass_all=True) for _ in range(3)]  # moving mean of the last 3: 0.5, then 0.75 >= 0.6
    assert [r.stage_name for r in high] == ["medium", "hard", "hard"]
    assert tr.progress.curriculum.stage_start_step == 6


def test_loss_aggregation_is_switched_from_the_manifest(tmp_path, monkeypatch):
    """``algorithm.lossAggregation`` travels manifest → WorkloadConfig → the update (rl.ppo) →
    every aggregate() of the loss, and changes the loss on the same batch and weights."""

    seen: list[str] = []
    real = aggregate

    def spy(values, mask, mode="token", *args, **kwargs):
        seen.append(mode)
        return real(values, mask, mode, *args, **kwargs)

    from kuberl.workloads.rl import losses as rl_losses
    from kuberl.workloads.rl import ppo

    monkeypatch.setattr(rl_losses, "aggregate", spy)
    monkeypatch.setattr(ppo, "aggregate", spy)
    losses = {}
    for mode in ("token", "sequence"):
        tr = _tiny_trainer(tmp_path, algorithm={"lossAggregation": mode})
        assert tr.cfg.algorithm.loss_aggregation == mode
        prompts = tr.prompts.take(2, 0)
        groups = _answered(tr, prompts, pass_all=False, response_len=lambda i: 1 + 3 * (i % 2))  # unequal lengths
        seen.clear()
        losses[mode] = tr.train(groups)[0].policy["loss"]
        assert seen and set(seen) == {mode}, seen  # the policy loss and the entropy bonus
    assert abs(losses["token"] - losses["sequence"]) > 1e-4, losses


def test_manifest_ppo_settings_reach_the_trainers_update(tmp_path):
    """rolloutBatchSize / globalBatchSize mini-batches, epochs, the clip epsilons and klCoef,
    set in the manifest, change what the trainer's step does and reports."""
    settings = {"rolloutBatchSize": 32, "epochs": 2, "clipEpsLow": 0.001, "clipEpsHigh": 0.001, "learningRate": 1e-2}
    model = {"source": "builtin://tiny", "dtype": "float32", "warmupSftSteps": 0}
    tr = _tiny_trainer(tmp_path, algorithm={**settings, "klCoef": 0.5}, model=model)
    tr.init_fresh()  # what restore_or_init does without a checkpoint: builds the frozen reference
    assert tr.backend.reference is not None
    rows = tr.train(_answered(tr, tr.prompts.take(4, 0), pass_all=False))
    assert [(r.epoch, r.mini_batch) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [r.step for r in rows] == [1, 2, 3, 4] and tr.progress.version == 4
    assert (
        rows[0].policy["ratio_dev_mean"] == 0 and rows[0].policy["kl"] == 0
    )  # proximal = reference = current at the start
    assert all(r.policy["ratio_dev_mean"] > 0 and r.policy["clip_frac"] > 0 and r.policy["kl"] > 0 for r in rows[1:])
    plain = _tiny_trainer(tmp_path, algorithm=settings, model=model)
    plain.init_fresh()
    assert plain.backend.reference is None
    plain_rows = plain.train(_answered(plain, plain.prompts.take(4, 0), pass_all=False))
    assert "kl" not in plain_rows[-1].policy and plain_rows[-1].policy["loss"] != rows[-1].policy["loss"]


def test_seed_sets_the_prompt_order_and_the_checkpoint_the_weights(tmp_path):
    def start(seed: int):
        tr = _tiny_trainer(tmp_path, runPolicy={"maxSteps": 10, "seed": seed})
        return torch.cat([p.detach().flatten() for p in tr.backend.model.parameters()]), [
            p.data["prompt"] for p in tr.prompts.take(20, 0)
        ]

    (w0, p0), (w0b, p0b), (w1, p1) = start(0), start(0), start(1)
    assert p0 == p0b and p0 != p1
    # builtin://tiny is one checkpoint: every job starts from its weights, whatever its seed.
    assert torch.equal(w0, w0b) and torch.equal(w0, w1)


def test_assembler_trains_the_oldest_groups_first():
    """Groups nearest the staleness bound go into the next step; fresher ones can still wait one."""
    from kuberl.workloads.buffer.records import Trajectory
    from kuberl.workloads.trainer.groups import GroupAssembler

    asm = GroupAssembler(dynamic_sampling=False)
    for prompt, version in (("a", 5), ("b", 4), ("c", 5), ("d", 3)):
        for i in range(2):
            asm.add(Trajectory(sample_id=f"{prompt}{i}", prompt_id=prompt, group_id=prompt, policy_version=version,
                               tokens=[1, 2], logprobs=[0, -1], loss_mask=[0, 1], reward=float(i),
                               meta={"group_size": 2}))
    assert [g[0].prompt_id for g in asm.take(4)] == ["d", "b"]
    assert [g[0].prompt_id for g in asm.take(4)] == ["a", "c"]  # arrival order within a version


def test_assembler_evicts_groups_that_aged_past_the_bound_before_a_batch_is_counted():
    """A group too stale to train is dropped from the ready list, so the next batch is a full
    batch of usable groups instead of a short one."""
    from kuberl.workloads.buffer.records import Trajectory
    from kuberl.workloads.trainer.groups import GroupAssembler

    asm = GroupAssembler(dynamic_sampling=False)
    for prompt, version in (("old", 2), ("ok", 4), ("new", 5)):
        for i in range(2):
            asm.add(Trajectory(sample_id=f"{prompt}{i}", prompt_id=prompt, group_id=prompt, policy_version=version,
                               tokens=[1, 2], logprobs=[0, -1], loss_mask=[0, 1], reward=float(i),
                               meta={"group_size": 2}))
    assert sum(map(len, asm.drop_untrainable(current_version=5, max_off_policy_steps=1))) == 2
    assert asm.ready_samples() == 4 and [g[0].prompt_id for g in asm.take(4)] == ["ok", "new"]
    assert asm.drop_untrainable(current_version=5, max_off_policy_steps=1) == []
