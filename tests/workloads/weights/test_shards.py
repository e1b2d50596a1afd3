"""A version published in parts by two ranks (gloo, torchrun) on real SeaweedFS
(`weights.shards`): it fetches bit-exactly as one version, its second version is stored as
deltas against each rank's first part and rebuilds exactly, and a rank that dies before its
part landed leaves no version anyone can see.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kuberl.workloads.localproc import free_port
from kuberl.workloads.weights import delta

ROOT = Path(__file__).resolve().parents[3]
CONFIG = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64}


def reference_state(step: int) -> dict[str, torch.Tensor]:
    """A small HF-named state; ``step`` > 0 moves a few weights of a few tensors (a sync's worth)."""
    gen = torch.Generator().manual_seed(0)
    state = {f"model.layers.{i}.mlp.{p}.weight": torch.randn(96, 64, generator=gen) for i in range(3)
             for p in ("gate_proj", "up_proj", "down_proj")}
    state["model.embed_tokens.weight"] = torch.randn(128, 64, generator=gen)
    state["model.norm.weight"] = torch.ones(64)
    for k in sorted(state)[:step * 3]:
        state[k] = state[k].clone()
        state[k].view(-1)[:50] += 0.5
    return state


def _run(mode: str, out: Path, s3_server, bucket: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AWS_ACCESS_KEY_ID": s3_server.access_key,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "tests.workloads.weights.test_shards", mode, str(out), s3_server.endpoint, bucket]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _store(s3_server, bucket: str):
    from kuberl.workloads.weights.s3 import s3_client
    from kuberl.workloads.weights.store import WeightStore

    return WeightStore(s3_client(s3_server.endpoint, region_name="us-east-1", aws_access_key_id=s3_server.access_key,
                                 aws_secret_access_key=s3_server.secret_key), bucket, "shards")


def test_two_ranks_publish_one_version_that_fetches_bit_exactly_and_deltas_rebuild(s3_server, s3_bucket, tmp_path):
    from kuberl.workloads.weights.manifest import local_version
    from kuberl.workloads.weights.sync import engine_state, read_checkpoint_dir

    run = _run("publish", tmp_path, s3_server, s3_bucket)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    store = _store(s3_server, s3_bucket)
    assert store.versions() == [1, 2]
    first, first_manifest = store.fetch(1, tmp_path / "fetched" / "v1")
    names = sorted(f.name for f in first_manifest.files)
    assert names == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                     "model.safetensors.index.json"]
    index = json.loads((first / "model.safetensors.index.json").read_text())["weight_map"]
    assert sorted(index) == sorted(reference_state(0)) and set(index.values()) == set(names[1:3])
    for step, path in ((0, first), (1, None)):
        if path is None:  # the second version: deltas, rebuilt against the first one held here
            path, manifest = store.fetch(2, tmp_path / "fetched" / "v2", have=[local_version(first)])
            assert manifest.parent == 1 and manifest.stored_bytes < 0.5 * manifest.total_bytes, manifest
            assert {f.encoding for f in manifest.files if f.name.endswith(".safetensors")} == {delta.ENCODING}
        expected, _ = engine_state(reference_state(step), "bfloat16", False)
        got = read_checkpoint_dir(path)
        assert sorted(got) == sorted(expected)
        for k in expected:
            assert torch.equal(got[k], expected[k].float()), k
    assert json.loads((first / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_a_rank_that_dies_before_its_part_landed_leaves_no_visible_version(s3_server, s3_bucket, tmp_path):
    from kuberl.workloads.weights.store import VersionNotFoundError

    run = _run("crash", tmp_path, s3_server, s3_bucket)
    assert run.returncode != 0  # torchrun ends the gang when a rank fails
    store = _store(s3_server, s3_bucket)
    assert store.versions() == []
    with pytest.raises(VersionNotFoundError):
        store.manifest(1)
    assert (tmp_path / "rank0-uploaded").exists(), "rank 0's part had landed: the version is invisible anyway"
    assert [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])
            if o["Key"].endswith("model-00001-of-00002.safetensors")], "rank 0's part is in the store, unlisted"


def worker(mode: str, out: Path, endpoint: str, bucket: str) -> None:
    import torch.distributed as dist

    from kuberl.workloads.weights.s3 import s3_client
    from kuberl.workloads.weights.shards import commit_parts, publish_part
    from kuberl.workloads.weights.store import WeightStore
    from kuberl.workloads.weights.sync import engine_state

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    control = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=60))
    store = WeightStore(s3_client(endpoint, region_name="us-east-1"), bucket, "shards")
    parent = None
    for version in (1, 2):
        full = reference_state(version - 1)
        mine, _ = engine_state({k: full[k] for k in sorted(full)[rank::2]}, "bfloat16", False)
        if mode == "crash" and rank == 1:
            dist.barrier(group=control)  # once rank 0's part landed
            os._exit(3)  # before its own: rank 0's gather never completes
        part = publish_part(store, mine, version, rank, 2, keep_dir=out / f"rank{rank}",
                            parent=parent[0] if parent else None)
        if rank == 0:
            (out / "rank0-uploaded").touch()
        if mode == "crash":
            dist.barrier(group=control)
        gathered = [None, None] if rank == 0 else None
        dist.gather_object(part, gathered, dst=0, group=control)
        manifest = None
        if rank == 0:
            manifest = commit_parts(store, version, gathered, CONFIG, dtype="bfloat16", use_fp8=False, parent=parent)
        box = [manifest]
        dist.broadcast_object_list(box, src=0, group=control)
        parent = (box[0].version, box[0].depth)
    dist.barrier(group=control)
    dist.destroy_process_group()


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4])
