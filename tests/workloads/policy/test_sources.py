"""model.source schemes: builtin://, file://, s3:// (SeaweedFS) and an hf:// hub cache all
give the same loadable HF directory; a missing model is one clear error."""

from __future__ import annotations

import shutil

import pytest

from kuberl.workloads.policy.sources import MARKER, ModelNotFound, check_source, local_model_dir
from kuberl.workloads.policy.tiny.checkpoint import write_builtin_tiny
from kuberl.workloads.policy.tiny.model import load_pretrained
from kuberl.workloads.policy.tokenizer import Tokenizer
from tests.support.fixtures_servers import s3_bucket, s3_server  # noqa: F401  (fixtures)


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBERL_MODEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _same_model(a, b) -> None:
    ta, tb = load_pretrained(a).state_dict(), load_pretrained(b).state_dict()
    assert ta.keys() == tb.keys() and all((ta[k] == tb[k]).all() for k in ta)
    assert Tokenizer.from_pretrained(a).encode_prompt({"prompt": "3+4="}) == Tokenizer.from_pretrained(b).encode_prompt(
        {"prompt": "3+4="}
    )


def test_builtin_tiny_is_a_real_hf_checkpoint(model_cache):
    from transformers import AutoModelForCausalLM

    d = local_model_dir("builtin://tiny")
    assert d.parent == model_cache and (d / MARKER).is_file() and local_model_dir("builtin://tiny") == d
    assert type(AutoModelForCausalLM.from_pretrained(str(d))).__name__ == "Qwen2ForCausalLM"
    tok = Tokenizer.from_pretrained(d)
    assert tok.encode_prompt({"prompt": "3+4="}) == [1, 6, 13, 7, 17]  # BOS, then one id per character
    assert tok.encode_prompt({"messages": [{"role": "user", "content": "3+4="}]}) == [1, 6, 13, 7, 17]
    assert tok.decode(tok.encode("12 ab\n") + [2]) == "12 ab\n" and tok.stop_ids == (2,)


def test_file_s3_and_hub_cache_sources_load_the_same_model(tmp_path, model_cache, s3_server, s3_bucket, monkeypatch):
    src = write_builtin_tiny(tmp_path / "src")
    assert local_model_dir(f"file://{src}") == src
    client = s3_server.client()
    for f in src.iterdir():
        client.upload_file(str(f), s3_bucket, f"models/tiny/{f.name}")
    fetched = local_model_dir(f"s3://{s3_bucket}/models/tiny", s3_client=client)
    _same_model(src, fetched)
    assert local_model_dir(f"s3://{s3_bucket}/models/tiny/", s3_client=client) == fetched  # cached, marker checked
    (fetched / "model.safetensors").write_bytes(b"truncated")
    _same_model(src,
                local_model_dir(f"s3://{s3_bucket}/models/tiny", s3_client=client))  # a damaged copy is fetched again

    hub = tmp_path / "hub"
    snap = hub / "models--acme--tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(src, snap)
    (hub / "models--acme--tiny" / "refs").mkdir()
    (hub / "models--acme--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert local_model_dir("hf://acme/tiny") == snap == local_model_dir(f"hf://acme/tiny@{'a' * 40}")


def test_missing_models_name_where_they_were_looked_for(tmp_path, monkeypatch, s3_server, s3_bucket):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFound, match=r"refs/main is absent.*HF_HUB_CACHE"):
        local_model_dir("hf://acme/absent")
    with pytest.raises(ModelNotFound, match="no config.json"):
        local_model_dir(f"s3://{s3_bucket}/nothing/", s3_client=s3_server.client())
    with pytest.raises(ModelNotFound, match="no config.json in /nonexistent"):
        local_model_dir("file:///nonexistent")
    with pytest.raises(ModelNotFound, match="scheme must be one of"):
        check_source("gs://bucket/model")


def test_transformers_and_the_torch_backend_give_the_same_logprobs(model_cache):
    """The builtin checkpoint as `transformers` runs it (Qwen2ForCausalLM, float32) and as the
    tiny torch backend and engine run it: the same per-token logprobs on the same tokens.
    (megatron against the torch backend: tests/workloads/policy/megatron_policy_suite.py; SGLang
    against it: tests/workloads/engines/test_sglang.py.)"""
    import torch
    from transformers import AutoModelForCausalLM

    from kuberl.workloads.policy.tiny.model import token_logprobs

    d = local_model_dir("builtin://tiny")
    tok = Tokenizer.from_pretrained(d)
    rows = [tok.encode_prompt({"prompt": p}) + tok.encode(a) for p,
            a in (("3+4=", "7"), ("9+9=", "18"), ("0+1=", "1 and more"))]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_id] * (width - len(r)) for r in rows])
    valid = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.bool)
    ours = token_logprobs(load_pretrained(d).eval(), ids, valid)
    hf = AutoModelForCausalLM.from_pretrained(str(d), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(input_ids=ids, attention_mask=valid.long()).logits.float()
    theirs = torch.nn.functional.pad(torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1),
                                     (1, 0))
    mask = valid.clone()
    mask[:, 0] = False
    assert (ours - theirs)[mask].abs().mean() < 1e-5 and (ours - theirs)[mask].abs().max() < 1e-4
