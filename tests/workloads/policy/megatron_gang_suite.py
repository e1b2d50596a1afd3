"""The megatron trainer as a torchrun gang (gloo on CPU): rank 0 runs the trainer, the others follow.

The same trainer round (warm start, reference policy, one rollout batch of PPO/GRPO steps
with a KL term; mini-batches of 3 samples, so data-parallel shares are uneven) runs as one
rank, as tensor parallel 2 and as data parallel 2 through the trainer's own backend seam
(`Trainer.train` → `GangDriver` → every rank). The step metrics and the published weights
agree within float32 reduction-order noise; a checkpoint taken mid-run and loaded back into
the gang replays the next round exactly, and a checkpoint written by a gang of another
shape (through the trainer's checkpoint store) resumes into the same next round.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kuberl.workloads.localproc import free_port

ROOT = Path(__file__).resolve().parents[3]
METRICS = ("loss", "grad_norm", "kl", "ratio_mean", "clip_frac")


def _gang_round(out: Path, tensor: int, ranks: int, resume_from: Path | None, store: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **store}
    module = ["-m", "tests.workloads.policy.megatron_gang_suite", str(out), str(tensor), str(ranks),
              str(resume_from or "")]
    if ranks == 1:
        cmd = [sys.executable, *module]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}",
               f"--master-port={free_port()}", *module]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-4000:]
    result = torch.load(out / "result.pt", weights_only=True) | json.loads((out / "rows.json").read_text())
    follower = out / "follower.json"
    return result | {"follower_calls": json.loads(follower.read_text())["calls"] if follower.exists() else 0}


@pytest.fixture(scope="module")
def rounds(tmp_path_factory, s3_server) -> dict[str, dict]:
    base = tmp_path_factory.mktemp("gang")
    bucket = f"gang-{os.getpid()}"
    s3_server.client().create_bucket(Bucket=bucket)
    store = {"KUBERL_TEST_S3": s3_server.endpoint, "KUBERL_TEST_BUCKET": bucket,
             "AWS_ACCESS_KEY_ID": s3_server.access_key,
             "AWS_SECRET_ACCESS_KEY": s3_server.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}
    # Each round also resumes the previous round's checkpoint: one's at TP=2, TP=2's at DP=2, DP=2's at one rank.
    return {name: _gang_round(base / name, tensor, ranks, base / previous / "checkpoints" if previous else None, store)
            for name, tensor, ranks, previous in (("one", 1, 1, None), ("tp2", 2, 2, "one"), ("dp2", 1, 2, "tp2"))}


@pytest.mark.parametrize("layout", ["one", "tp2", "dp2"])
def test_the_gang_publishes_its_weights_in_parts_that_fetch_bit_exactly(rounds, layout):
    """`Trainer.publish` on the gang (`weights.shards`): each owning rank uploads the HF
    tensors of the parameters it owns, a file per tensor-parallel rank (data-parallel
    replicas add none), rank 0 the manifest; the fetched version is the gang's weights, bit
    for bit; the next version (weightStore.fullVersionEvery 4) goes as deltas against each
    rank's previous part and rebuilds exactly."""
    r = rounds[layout]
    parts = {"one": 1, "tp2": 2, "dp2": 1}[layout]
    assert r["model_files"] == [f"model-{i + 1:05d}-of-{parts:05d}.safetensors" for i in range(parts)], r["model_files"]
    assert r["published_exact"] and r["delta_exact"] and r["delta_moved"], layout
    assert r["delta_parent"] == r["first_version"] and r["delta_stored"] < r["delta_bytes"]


@pytest.mark.parametrize("layout", ["tp2", "dp2"])
def test_a_gang_trains_what_one_rank_trains(rounds, layout):
    one, gang = rounds["one"], rounds[layout]
    assert gang["world"] == 2 and gang["follower_calls"] >= 5, "the other rank made the trainer's calls"
    assert len(gang["rows"]) == len(one["rows"]) >= 2
    for a, b in zip(one["rows"], gang["rows"], strict=True):
        assert a["samples"] == b["samples"] and a["reward_mean"] == b["reward_mean"], (
            "rows name the whole batch's samples"
        )
        for key in METRICS:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    # Adam turns reduction-order noise in a near-zero gradient into a full-size step of
    # either sign, so weights are compared as a whole: the gang's distance from the single
    # rank's weights is a small fraction of how far training moved them.
    moved = sum(float((one["weights"][k] - one["start"][k]).double().pow(2).sum()) for k in one["weights"]) ** 0.5
    apart = sum(float((gang["weights"][k] - one["weights"][k]).double().pow(2).sum()) for k in one["weights"]) ** 0.5
    assert moved > 1e-2 and apart < 1e-2 * moved, (apart, moved)


@pytest.mark.parametrize("layout", ["one", "tp2", "dp2"])
def test_a_checkpoint_loaded_back_into_the_gang_replays_the_next_round(rounds, layout):
    r = rounds[layout]
    assert r["replayed"] == r["second"]


@pytest.mark.parametrize(("layout", "writer"), [("tp2", "one"), ("dp2", "tp2")])
def test_a_gang_of_another_shape_resumes_a_checkpoint(rounds, layout, writer):
    """Weights and Adam's moments travel in HF layout: the resumed round is the writer's next round."""
    resumed, expected = rounds[layout]["resumed"], rounds[writer]["second"]
    assert len(resumed) == len(expected) >= 2
    for a, b in zip(expected, resumed, strict=True):
        assert a["samples"] == b["samples"]
        for key in METRICS:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key


def test_the_megatron_trainer_refuses_a_torch_trainer_checkpoint(rounds):
    assert "written by the torch trainer" in rounds["one"]["refusal"]


def worker(out: Path, tensor: int, ranks: int, resume_from: Path | None) -> None:
    """One rank of the gang (or the single rank): rank 0 drives the trainer, the others follow."""
    import torch.distributed as dist

    from kuberl.workloads.policy.megatron.backend import MegatronTrainerBackend
    from kuberl.workloads.policy.megatron.gang import follow, rank, release_followers
    from kuberl.workloads.policy.job_model import job_model_dir
    from kuberl.workloads.trainer.checkpoints import CheckpointStore
    from tests.workloads.trainer.test_workloads_local import _answered, _tiny_config

    out.mkdir(parents=True, exist_ok=True)
    cfg = _tiny_config(out, algorithm={"entropyCoef": 0.0, "klCoef": 0.05, "groupSize": 3, "globalBatchSize": 3,
                                       "rolloutBatchSize": 12},
                       trainer={"backend": "megatron", "replicas": ranks, "gpusPerReplica": 0,
                                "parallelism": {"tensor": tensor}},
                       model={"source": "builtin://tiny", "dtype": "float32", "warmupSftSteps": 2})
    cfg = cfg.model_copy(update={"weight_store": cfg.weight_store.model_copy(update={
        "endpoint": os.environ["KUBERL_TEST_S3"], "bucket": os.environ["KUBERL_TEST_BUCKET"],
        "full_version_every": 4})})
    if rank() != 0:
        calls = follow(MegatronTrainerBackend(job_model_dir(cfg), cfg))
        (out / "follower.json").write_text(json.dumps({"calls": calls}))
        return
    from kuberl.workloads.trainer.trainer import Trainer

    tr = Trainer(cfg)
    start = tr.backend.hf_state()
    tr.init_fresh()
    groups = _answered(tr, tr.prompts.take(4, 0), pass_all=False, response_len=lambda i: 1 + i % 3)
    rows = tr.train(groups)
    # Pickled as the checkpoint store would: the live optimizer state keeps changing.
    state, progress = copy.deepcopy(tr.backend.checkpoint_state()), copy.deepcopy(tr.progress)
    later = _answered(tr, tr.prompts.take(4, 0), pass_all=False, response_len=lambda i: 2 + i % 2)
    second = tr.train(later)
    tr.backend.load_checkpoint_state(state, keep_reference=True)
    tr.progress = copy.deepcopy(progress)  # what Trainer.restore_or_init restores beside the backend's state
    replayed = tr.train(later)
    weights, world = tr.backend.hf_state(), dist.get_world_size()
    CheckpointStore(str(out / "checkpoints")).save(1, state)  # for the next round's gang of another shape
    resumed = []
    if resume_from is not None:
        tr.backend.load_checkpoint_state(CheckpointStore(str(resume_from)).load_latest(), keep_reference=True)
        tr.progress = copy.deepcopy(progress)
        resumed = tr.train(later)
    refusal = ""
    if ranks == 1:  # a refusal on a gang would stop its followers too
        try:
            tr.backend.load_checkpoint_state({"model": state["model"], "optimizer": {}}, keep_reference=True)
        except ValueError as e:
            refusal = str(e)
    published = _publish_twice(tr, out, first=1000 + 10 * tensor + ranks)  # a version per layout: one bucket
    release_followers()  # the gang ends here: its process groups are closed
    pick = lambda rs: [{k: r.to_json()[k] for k in ("samples", "reward_mean", *METRICS)} for r in rs]  # noqa: E731
    torch.save({"weights": weights, "start": start}, out / "result.pt")
    (out / "rows.json").write_text(json.dumps({
        "rows": pick(rows), "second": pick(second), "replayed": pick(replayed), "world": world,
        "resumed": pick(resumed), "refusal": refusal, **published}))


def _publish_twice(tr, out: Path, first: int) -> dict:
    """Two versions through `Trainer.publish` (the gang's sharded path), each fetched back
    and compared with the gang's weights; the second is stored as deltas against the first."""
    from kuberl.workloads.trainer.warm_start import warmup_batches
    from kuberl.workloads.weights.manifest import local_version
    from kuberl.workloads.weights.sync import read_checkpoint_dir, weight_store

    store = weight_store(tr.cfg)
    tr.progress.version = first
    found, found_weights = {}, {}
    for label in ("published", "delta"):
        if label == "delta":  # the weights move a little, as between two syncs: one supervised step at a small rate
            tr.backend.warm_start(warmup_batches(tr.prompts.problems, tr.tokenizer, 1, seed=1), 1e-6)
            tr.progress.version += 1
        weights = tr.backend.hf_state()
        published = tr.publish()
        have = [v for v in [local_version(out / "fetched" / "first")] if v is not None]
        path, manifest = store.fetch(published.version,
                                     out / "fetched" / ("first" if label == "published" else "second"), have=have)
        got = read_checkpoint_dir(path)
        found[f"{label}_exact"] = sorted(got) == sorted(weights) and all(torch.equal(got[k],
                                                                                     weights[k]) for k in weights)
        found[f"{label}_moved"] = label == "published" or not all(torch.equal(weights[k],
                                                                              found_weights[k]) for k in weights)
        found_weights = weights
        if label == "published":
            found["model_files"] = sorted(f.name for f in manifest.files if f.name.endswith(".safetensors"))
        else:
            found |= {"delta_parent": manifest.parent, "delta_stored": manifest.stored_bytes,
                      "delta_bytes": manifest.total_bytes}
    found["first_version"] = first
    return found


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    target = Path(sys.argv[1])
    worker(target, int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]) if sys.argv[4] else None)
