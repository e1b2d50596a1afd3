"""The S3 weight store against a real SeaweedFS."""

from __future__ import annotations

import json
import os

import pytest
import torch

from kuberl.workloads.weights.manifest import (
    MANIFEST,
    ChecksumError,
    VersionExistsError,
    VersionNotFoundError,
    plan_prune,
)
from kuberl.workloads.weights.hf_files import save_sharded
from kuberl.workloads.weights.store import WeightStore

pytestmark = pytest.mark.servers


def test_plan_prune():
    assert plan_prune([1, 2, 3, 4], [], keep=2) == [1, 2]
    assert plan_prune([3, 4], [1, 5], keep=2) == [1]  # 5 may be uploading right now
    assert plan_prune([], [1], keep=3) == []
    with pytest.raises(ValueError):
        plan_prune([1], [], keep=0)


def write_checkpoint(path, seed=0, big_mib=0):
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "model.embed_tokens.weight": torch.randn(256, 64, generator=g).bfloat16(),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(128, 64, generator=g).bfloat16(),
        "model.norm.weight": torch.ones(64).bfloat16(),
    }
    if big_mib:  # large enough to go multipart / ranged
        tensors["lm_head.weight"] = torch.randn(big_mib * 1024 * 1024 // 128, 64, generator=g).bfloat16()
    shards = save_sharded(tensors, path, max_shard_bytes=8 * 1024 * 1024,
                          config={"architectures": ["LlamaForCausalLM"], "hidden_size": 64})
    return tensors, shards


@pytest.fixture
def store(s3_server, s3_bucket):
    return WeightStore(s3_server.client(), s3_bucket, "team-a/job-1/weights")


def test_publish_then_fetch_round_trip(store, tmp_path):
    from safetensors.torch import load_file

    tensors, shards = write_checkpoint(tmp_path / "src", big_mib=40)
    assert len(shards) > 1
    m = store.publish(1, tmp_path / "src", meta={"step": 10})
    assert store.versions() == [1] and store.latest() == 1
    assert {f.name for f in m.files} == {*shards, "config.json", "model.safetensors.index.json"}
    assert m.quantization is None and m.meta == {"step": 10}

    dest, got = store.fetch(None, tmp_path / "dst")
    assert got.files == m.files
    loaded = {}
    for s in shards:
        loaded.update(load_file(dest / s))
    assert loaded.keys() == tensors.keys()
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v), k
    index = json.loads((dest / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    assert not [p for p in os.listdir(dest) if p.endswith(".partial")]
    with pytest.raises(VersionExistsError):
        store.publish(1, tmp_path / "src")


def test_upload_interrupted_before_manifest_is_invisible(store, tmp_path, monkeypatch):
    write_checkpoint(tmp_path / "src")
    store.publish(1, tmp_path / "src")

    def crash(*a, **k):
        raise KeyboardInterrupt("trainer killed before the manifest")

    monkeypatch.setattr(store, "_write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        store.publish(2, tmp_path / "src")
    monkeypatch.undo()

    listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix=f"{store.prefix}/v00000002/")
    assert listed["KeyCount"] > 0  # the shards are there…
    assert store.versions() == [1] and store.latest() == 1  # …but no reader sees version 2
    with pytest.raises(VersionNotFoundError, match="version 2"):
        store.fetch(2, tmp_path / "dst")


def test_corrupted_shard_is_refused_naming_the_file(store, tmp_path):
    _, shards = write_checkpoint(tmp_path / "src")
    store.publish(5, tmp_path / "src")
    victim = shards[0]
    key = f"{store.prefix}/v00000005/{victim}"
    body = bytearray(store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF  # same size, one flipped byte
    store.client.put_object(Bucket=store.bucket, Key=key, Body=bytes(body))

    with pytest.raises(ChecksumError, match=rf"{victim}: sha256 [0-9a-f]+ != manifest") as err:
        store.fetch(5, tmp_path / "dst")
    assert err.value.file == victim
    assert not (tmp_path / "dst" / victim).exists()


def test_prune_keeps_newest_n_and_drops_abandoned(store, tmp_path):
    write_checkpoint(tmp_path / "src")
    for v in (1, 2, 3, 4):
        store.publish(v, tmp_path / "src")
    # An abandoned upload (older) and one in progress (newer): shards without a manifest.
    for v in (0, 9):
        store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/v{v:08d}/model.safetensors", Body=b"x")
    assert store.prune(keep=2) == [0, 1, 2]
    assert store.versions() == [3, 4]
    keys = [o["Key"] for o in store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)["Contents"]]
    assert not [k for k in keys if "/v00000001/" in k or "/v00000000/" in k]
    assert any("/v00000009/" in k for k in keys)
    assert store.manifest(4).version == 4
    assert f"{store.prefix}/v00000004/{MANIFEST}" in keys
