"""Held-out evaluation: pass@k arithmetic, the scores of a dataset, the builtin split, and
an evaluation of the tiny policy through the engine the trainer evaluates on."""

from __future__ import annotations

import math

import pytest
import torch

from kuberl.workloads.engines.batching import BatchingEngine
from kuberl.workloads.engines.torch_engine import TorchEngine
from kuberl.workloads.policy.tiny.model import seeded_model
from kuberl.workloads.spec import Dataset
from kuberl.workloads.tasks.datasets import load_dataset
from kuberl.workloads.trainer.evaluation import Evaluator, pass_at_k, score_dataset
from tests.support.objects import workload_config_for
from tests.support.tiny import tiny_tokenizer

torch.set_num_threads(1)


def test_pass_at_k_and_scores():
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 0.7
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)
    s = score_dataset([1.0, 0.0], [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], k=4)
    assert (s.greedy, s.pass_at_1, s.pass_at_k, s.reward_mean) == (0.5, 0.125, 0.5, 0.125)
    assert s.metrics("held", 4)["eval/held/pass@4"] == 0.5


def test_builtin_split_holds_out_a_fifth():
    train = load_dataset(Dataset(name="train", source="builtin://arithmetic?split=train"))
    test = load_dataset(Dataset(name="test", source="builtin://arithmetic?split=test"))
    whole = load_dataset(Dataset(name="all", source="builtin://arithmetic"))
    assert (len(train), len(test), len(whole)) == (80, 20, 100)
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert {p.prompt for p in train} | {p.prompt for p in test} == {p.prompt for p in whole}
    with pytest.raises(ValueError, match="split"):
        load_dataset(Dataset(name="x", source="builtin://arithmetic?split=dev"))


def _evaluator(tmp_path, **evaluation) -> Evaluator:
    spec = {
        "model": {"source": "builtin://tiny", "dtype": "float32"},
        "datasets": [{"name": "sums", "source": "builtin://arithmetic?split=train"}],
        "reward": {"type": "verifier", "verifier": {"name": "arithmetic"}},
        "algorithm": {"groupSize": 2, "globalBatchSize": 4, "rolloutBatchSize": 4, "maxResponseLength": 3},
        "trainer": {"backend": "torch"}, "mode": "colocated", "maxOffPolicySteps": 0,
        "weightStore": {"bucket": "kuberl"},
        "evaluation": {"datasets": [{"name": "held", "source": "builtin://arithmetic?split=test"}], **evaluation},
    }
    cfg = workload_config_for(spec, "eval", nats_url="nats://127.0.0.1:1", s3_endpoint="http://127.0.0.1:1",
                              output_dir=str(tmp_path))
    return Evaluator(cfg, tiny_tokenizer())


def test_evaluator_takes_the_first_max_prompts(tmp_path):
    ev = _evaluator(tmp_path, maxPrompts=7)
    assert [p.prompt for p in ev.problems["held"]] == [p.prompt for p in load_dataset(
        Dataset(name="held", source="builtin://arithmetic?split=test"))][:7]


async def test_evaluation_runs_greedy_and_sampled_episodes(tmp_path):
    ev = _evaluator(tmp_path, maxPrompts=5, samplesPerPrompt=3)
    engine = BatchingEngine(TorchEngine(seeded_model(0), seed=1))
    try:
        scores = await ev.run(engine, None)
        again = await ev.run(engine, None)
    finally:
        await engine.stop()
    assert set(scores) == {"eval/held/greedy", "eval/held/pass@1", "eval/held/pass@3", "eval/held/reward_mean",
                           "eval/held/infra_failed"}
    assert scores["eval/held/infra_failed"] == 0  # every held-out sample was scored
    assert scores["eval/held/greedy"] == again["eval/held/greedy"]  # greedy is deterministic
    assert all(0.0 <= v <= 1.0 for v in scores.values())
