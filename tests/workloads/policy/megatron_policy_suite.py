"""megatron-core on CPU (gloo) under torchrun: TP=2 and PP=2 match one rank and the tiny torch backend.

Runs tests/support/megatron_worker.py at (TP, PP) = (1, 1), (2, 1) and (1, 2) on the tiny Qwen2 model's weights
and on random weights of an odd vocabulary (padding path), then compares: per-token
logprobs, the kuberl loss, the logprobs after one AdamW step, HF -> Megatron -> HF
bit-exactness, and a checkpoint round trip. Tolerances are float32 (reductions are
ordered differently across TP ranks): 1e-5 on logprobs, 1e-4 after a step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kuberl.workloads.policy.megatron.convert import (
    HFShape,
    hf_to_megatron,
    megatron_to_hf,
)
from kuberl.workloads.policy.tiny.model import (
    TinyConfig,
    save_pretrained,
    seeded_model,
    token_logprobs,
)
from kuberl.workloads.policy.tiny.train import TinyBackend
from kuberl.workloads.rl.ppo import ppo_update
from tests.support import megatron_worker

WORKER = Path(megatron_worker.__file__)
from tests.support.megatron_worker import (  # noqa: E402
    LEARNING_RATE,
    fixed_batch,
    ppo_settings,
    random_hf_state,
    rollout_batch,
)

ODD_VOCAB = {
    "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 33, "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0, "max_position_embeddings": 128, "tie_word_embeddings": False, "attention_bias": True,
}


def _torchrun(model_dir: Path, out: Path, nproc: int, port: int, pp: int = 1) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={port}",
           str(WORKER), "--model-dir", str(model_dir), "--out", str(out), "--pp", str(pp)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return torch.load(out / f"result-tp{nproc // pp}-pp{pp}.pt", weights_only=False)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("megatron-tiny")
    model = seeded_model(3)
    save_pretrained(model, base / "model")
    runs = {layout: _torchrun(base / "model", base, layout[0] * layout[1], 29610 + 3 * layout[0] + layout[1],
                              pp=layout[1])
            for layout in LAYOUTS}
    return model, runs


LAYOUTS = [(1, 1), (2, 1), (1, 2)]
"""(TP, PP) layouts compared: one rank, tensor parallel over 2, pipeline over 2 stages."""


def test_hf_megatron_hf_round_trip_is_bit_exact(tiny_runs):
    _, runs = tiny_runs
    assert all(runs[layout]["round_trip_exact"] for layout in LAYOUTS)


def test_tp2_logprobs_and_update_match_the_tiny_torch_backend(tiny_runs):
    """Both backends run the one update (rl.ppo.ppo_update): same per-step losses and
    clip statistics, same logprobs afterwards, at every (TP, PP) layout."""
    model, runs = tiny_runs
    ids, _, _ = fixed_batch(model.config.vocab_size)
    valid = torch.ones_like(ids, dtype=torch.bool)
    reference = token_logprobs(model, ids, valid)[:, 1:]
    for tp in LAYOUTS:
        assert torch.allclose(runs[tp]["before"], reference, atol=1e-5), (tp,
                                                                          (runs[tp]["before"] - reference).abs().max())
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    backend = TinyBackend(model, optimizer, grad_clip=1.0)
    steps = [r.metrics for r in ppo_update(backend, rollout_batch(model.config.vocab_size, reference), ppo_settings())]
    assert len(steps) == 2 and steps[0]["ratio_dev_mean"] < 1e-6 < steps[1]["ratio_dev_mean"]
    with torch.no_grad():
        after = token_logprobs(model, ids, valid)[:, 1:]
    for tp in LAYOUTS:
        got = runs[tp]["steps"]
        assert [s["loss"] for s in got] == pytest.approx([s["loss"] for s in steps], abs=1e-5), tp
        assert [s["ratio_mean"] for s in got] == pytest.approx([s["ratio_mean"] for s in steps], abs=1e-5), tp
        assert torch.allclose(runs[tp]["after"], after, atol=1e-4), (tp, (runs[tp]["after"] - after).abs().max())
        # Adam's first step moves every parameter by about lr whatever its gradient's size,
        # so a near-zero gradient whose sign differs between reduction orders can move a
        # parameter the other way: compare parameters at that scale, outputs tightly (above).
        exported = runs[tp]["exported_after_step"]
        for name, param in model.state_dict().items():
            assert torch.allclose(exported[name], param, atol=4 * LEARNING_RATE), name


def test_checkpoint_restores_the_exact_state(tiny_runs):
    _, runs = tiny_runs
    for tp in LAYOUTS:
        assert runs[tp]["restored_step"] == len(runs[tp]["steps"]) >= 1, "Adam's step count came back"
        assert runs[tp]["adam_round_trip_exact"], "Adam's moments came back bit-exactly through HF layout"
        assert torch.allclose(runs[tp]["restored"], runs[tp]["after"], atol=1e-5)


def test_odd_vocabulary_is_padded_and_masked_under_tp2(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(ODD_VOCAB))
    run1 = _torchrun(tmp_path / "model", tmp_path, 1, 29631)
    run2 = _torchrun(tmp_path / "model", tmp_path, 2, 29632)
    assert run2["round_trip_exact"]
    assert torch.allclose(run1["before"], run2["before"], atol=1e-5)
    # probabilities over the real vocabulary still sum to one: padded rows never leak mass
    assert torch.isfinite(run2["before"]).all()


def test_conversion_is_pure_and_inverse_per_rank():
    shape = HFShape.from_config(ODD_VOCAB)
    hf = random_hf_state(ODD_VOCAB, seed=11)
    ranks = [[hf_to_megatron(hf, shape, tp=2, tp_rank=r) for r in range(2)]]
    assert ranks[0][0]["embedding.word_embeddings.weight"].shape[0] == 17  # 33 padded to 34, halved
    back = megatron_to_hf(ranks, shape)
    assert set(back) == set(hf) and all(torch.equal(back[k], hf[k]) for k in hf)


def test_unshardable_layout_is_refused_naming_the_numbers():
    shape = HFShape.from_config({**ODD_VOCAB, "num_key_value_heads": 1})
    with pytest.raises(ValueError, match="num_key_value_heads=1 is not divisible by tensor parallel size 2"):
        hf_to_megatron(random_hf_state({**ODD_VOCAB, "num_key_value_heads": 1}, 0), shape, tp=2)


def test_tiny_config_is_shardable_at_tp2():
    shape = HFShape.from_config(TinyConfig().to_hf())
    assert shape.qkv_bias and shape.vocab_size % 2 == 0
