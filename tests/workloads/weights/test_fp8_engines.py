"""What the trainer publishes with FP8 on, as SGLang's loader reads it.

SGLang fuses q/k/v_proj and gate/up_proj into one layer and refuses a checkpoint whose
shards of one fused layer mix FP8 and high precision. A GQA model whose k/v rows are not
whole 128-blocks used to get FP8 q_proj beside bf16 k/v_proj: unloadable. Now a fused group
has one precision, high-precision groups are listed in ``ignored_layers``, the rest goes
out in the engines' dtype (BF16), and SGLang's loader accepts it — up to its AMX check,
where these CPUs stop it (FP8 GEMMs on CPU need AMX; a GPU serves it).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from kuberl.workloads.policy.tiny.model import TinyConfig, TinyQwen2ForCausalLM
from kuberl.workloads.weights import fp8
from kuberl.workloads.weights.store import WeightStore
from kuberl.workloads.weights.sync import publish_policy, read_checkpoint_dir
from tests.support.fixtures_servers import s3_bucket, s3_server  # noqa: F401  (fixtures)
from tests.support.fixtures_sglang import sglang_venv  # noqa: F401  (fixture)

# hidden 128, 4 heads of 32: q_proj has 128 rows (whole blocks), k/v_proj 64 (not).
SHAPE = TinyConfig(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)

SKIP_CHECK = textwrap.dedent("""
    import json, sys
    from sglang.srt.layers.quantization.utils import is_layer_skipped
    quant = json.load(open(sys.argv[1]))["quantization_config"]
    ignored = quant.get("ignored_layers", [])
    for layer in range({layers}):
        for fused in ("self_attn.qkv_proj", "mlp.gate_up_proj"):
            print(fused, is_layer_skipped(f"model.layers.{{layer}}.{{fused}}", ignored))
""")


@pytest.fixture
def published(s3_server, s3_bucket, tmp_path) -> Path:
    torch.manual_seed(0)
    model = TinyQwen2ForCausalLM(SHAPE)
    store = WeightStore(s3_server.client(), s3_bucket, "fp8-publish")
    publish_policy(store, model.state_dict(), SHAPE.to_hf(), 3, use_fp8=True, dtype="bfloat16")
    path, manifest = store.fetch(3, tmp_path / "v3")
    assert manifest.dtype == "float8_e4m3fn"
    return Path(path)


def test_fused_groups_share_one_precision_and_the_rest_is_bf16(published):
    from safetensors.torch import load_file

    tensors = load_file(str(next(published.glob("*.safetensors"))))
    config = json.loads((published / "config.json").read_text())
    ignored = config["quantization_config"]["ignored_layers"]
    for layer in range(SHAPE.num_hidden_layers):
        attn, mlp = f"model.layers.{layer}.self_attn", f"model.layers.{layer}.mlp"
        assert {tensors[f"{attn}.{p}.weight"].dtype for p in ("q_proj", "k_proj", "v_proj")} == {torch.bfloat16}
        assert {f"{attn}.{p}" for p in ("q_proj", "k_proj", "v_proj")} <= set(ignored)
        assert {tensors[f"{mlp}.{p}.weight"].dtype for p in ("gate_proj", "up_proj", "down_proj")} == {fp8.FP8_DTYPE}
    floats = {v.dtype for k, v in tensors.items() if v.dtype != fp8.FP8_DTYPE and not k.endswith(fp8.SCALE_SUFFIX)}
    assert floats == {torch.bfloat16} and config["torch_dtype"] == "bfloat16"
    # The in-process engine reads the same files, dequantised.
    assert read_checkpoint_dir(published)["model.layers.0.mlp.up_proj.weight"].dtype == torch.float32


def test_sglang_accepts_the_checkpoint_and_refused_the_old_layout(published, sglang_venv, tmp_path):
    python = str(sglang_venv / "bin" / "python")
    check = SKIP_CHECK.format(layers=SHAPE.num_hidden_layers)
    ok = subprocess.run([python, "-c", check, str(published / "config.json")], capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.split().count("True") == 2 and ok.stdout.split().count("False") == 2  # qkv ignored, gate_up FP8

    # The layout before fused groups: q_proj FP8, k/v_proj ignored by the shape rule.
    old = tmp_path / "old-config.json"
    quant = fp8.quantization_config({f"model.layers.{i}.self_attn.{p}.weight": "shape (64, 128) not a multiple of 128"
                                     for i in range(SHAPE.num_hidden_layers) for p in ("k_proj", "v_proj")})
    old.write_text(json.dumps({"quantization_config": quant}))
    refused = subprocess.run([python, "-c", check, str(old)], capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "some but not all shards" in refused.stderr


def test_sglang_loads_the_fp8_checkpoint_up_to_its_kernels(published, sglang_venv, tmp_path):
    """A server on the published directory gets past config and weight-name checks into the
    FP8 linear method; on a CPU without AMX it stops there, with that reason."""
    from kuberl.workloads.engines.sglang.launcher import ServerConfig, ServerDiedError, SGLangServer

    server = SGLangServer(ServerConfig(model_path=str(published), dtype="bfloat16", max_total_tokens=2048),
                          python=str(sglang_venv / "bin" / "python"), log_path=tmp_path / "server.log")
    try:
        server.start(timeout=600)
    except ServerDiedError:
        log = (tmp_path / "server.log").read_text()
        assert "some but not all shards" not in log
        assert "requires that CPU has AMX support" in log, log[-3000:]
    else:  # an AMX CPU serves it
        server.stop()
