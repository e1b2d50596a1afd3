"""A weight sync at frontier scale, modelled: GLM-4.5-size (355 B parameters) in FP8 to 64
rollout replicas, from stage throughputs measured here and stated assumptions for what this
machine cannot show (network, object store, GPUs, engine load).

Measured here, per CPU core, on a ≥ 1 GiB synthetic BF16 model (`--gib`): serialise
(safetensors shards to disk), checksum (sha256), delta encode and decode (weights.delta, a
step moving 3 % of the weights), and FP8 blockwise quantisation on the CPU (reported; the
model takes the GPU rate, which needs the GPU machine). Each stage then runs in parallel
over the workers the assumptions give it (cores per node, nodes, GPUs), bounded by the
links it crosses (per-node NIC, the object store's aggregate), and the sync is the sum of
its stages (no overlap between stages: an upper bound; pipelining would approach the
slowest stage). The bounding stage is the largest; the scenarios after the first show what
it takes to reach the 20 s that RDMA weight transfer reaches at this size.

    .venv/bin/python bench/sync_scale_model.py [--gib 1]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from _common import write_result

from kuberl.workloads.weights import delta, fp8
from kuberl.workloads.weights.manifest import sha256_file
from kuberl.workloads.weights.hf_files import save_sharded

GB = 1e9


@dataclass(frozen=True)
class Assumptions:
    """What the model cannot measure here, with where each figure comes from."""

    params: float = 355e9  # GLM-4.5 (slime's reference model)
    fp8_share: float = 0.97  # of parameters in FP8 blocks; embeddings, norms, router and the rest in BF16
    replicas: int = 64  # rollout engines, one 8-GPU node each (355 GB of FP8 fits in 8 x 80 GB)
    trainer_nodes: int = 16  # 128 GPUs; each distinct shard uploaded by its DP-rank-0 owner, spread over these nodes
    gpus_per_node: int = 8
    cores_per_node: int = 32  # CPU cores a node gives to serialising, hashing and delta coding
    nic_gb_s: float = 25.0  # per node, each way (200 Gb/s)
    store_gb_s: float = 400.0  # the object store's aggregate throughput (a cluster-local S3: 16+ servers at 25 GB/s)
    gpu_quantise_gb_s: float = 3900.0
    engine_load_gb_s: float = (
        10.0  # SGLang reading a checkpoint from page cache into 8 GPUs, per node (assumed; to be measured)
    )
    # Share of a version's bytes a delta stores; None: whole versions. The scenarios take the share
    # measured here on BF16; FP8 codes are assumed to change as often (a coarser grid changes less
    # often per step, but a block's scale moving changes the whole block).
    delta_stored: float | None = None
    fan_out: str = (
        "store"  # "store": every replica downloads from the object store; "peers": a relay tree among replicas
    )
    reconstruct_on_gpu: bool = False  # decode deltas on the engine's GPUs (the XOR scatter is memory-bound there)
    verify: str = "sha256"  # "sha256" over every file, or "stream": a hash per chunk while downloading (no second read)
    engine_load: str = (
        "disk"  # "disk": update_weights_from_disk; "tensor": loaded from the fetched buffers in GPU memory
    )


def version_bytes(a: Assumptions) -> float:
    return a.params * (a.fp8_share * 1 + (1 - a.fp8_share) * 2)


def model(a: Assumptions, rate: dict[str, float]) -> dict[str, float]:
    """Seconds per stage of one sync (`rate`: measured bytes per second per core)."""
    size = version_bytes(a)
    wire = size * (a.delta_stored if a.delta_stored is not None else 1.0)
    trainer_cores = a.trainer_nodes * a.cores_per_node
    stages = {
        # Each trainer GPU reads its shard in BF16 and writes it in FP8: 3 bytes a parameter.
        "quantise": 3 * a.params / (a.trainer_nodes * a.gpus_per_node) / (a.gpu_quantise_gb_s * GB),
        "serialise": size / (trainer_cores * rate["serialise"]),
        "checksum": size / (trainer_cores * rate["checksum"]),
        "encode": size / (trainer_cores * rate["encode"]) if a.delta_stored is not None else 0.0,
        "upload": wire / min(a.trainer_nodes * a.nic_gb_s * GB, a.store_gb_s * GB),
    }
    if a.fan_out == "store":  # every replica pulls the whole (or delta) version from the store
        download = max(wire / (a.nic_gb_s * GB), a.replicas * wire / (a.store_gb_s * GB))
    else:  # a pipelined relay among replicas: the store serves one copy, each node's NIC carries it in once, out once
        download = max(wire / (a.nic_gb_s * GB), wire / (a.store_gb_s * GB))
    stages["download"] = download
    if a.delta_stored is None:
        stages["reconstruct"] = 0.0
    elif a.reconstruct_on_gpu:
        stages["reconstruct"] = (
            3 * size / (a.gpus_per_node * a.gpu_quantise_gb_s * GB)
        )  # read parent + delta, write result
    else:
        stages["reconstruct"] = size / (a.cores_per_node * rate["decode"])
    stages["verify"] = size / (a.cores_per_node * rate["checksum"]) if a.verify == "sha256" else 0.0
    # From GPU buffers: a copy within each GPU's memory (taken at the quantise rate, HBM-bound too).
    stages["engine_load"] = (
        size / (a.engine_load_gb_s * GB)
        if a.engine_load == "disk"
        else size / (a.gpus_per_node * a.gpu_quantise_gb_s * GB)
    )
    return {k: round(v, 2) for k, v in stages.items()}


SCENARIOS = [
    ("whole FP8 versions, every replica from the store", {}),
    ("+ delta versions (a step moving 3 % of weights)", {"delta_stored": "measured"}),
    ("+ deltas rebuilt on the engines' GPUs, hashes while downloading",
     {"delta_stored": "measured", "reconstruct_on_gpu": True,
                                                                         "verify": "stream"}),
    ("+ engines load from GPU buffers (no disk), a relay tree among replicas",
     {"delta_stored": "measured", "reconstruct_on_gpu": True,
                                                                               "verify": "stream",
                                                                                "engine_load": "tensor",
                                                                               "fan_out": "peers"}),
    ("whole versions with that transport (no deltas)",
     {"verify": "stream", "engine_load": "tensor", "fan_out": "peers"}),
]


def measure(gib: float, tmp: Path) -> dict[str, float]:
    """Bytes per second on one core for each CPU stage, on `gib` GiB of synthetic BF16 weights."""
    torch.set_num_threads(1)
    n = int(gib * 2**30) // 2
    rows = 4096
    weights = (0.02 * torch.randn(n // rows, rows)).to(torch.bfloat16)
    size = weights.numel() * 2
    state = {f"model.layers.{i}.mlp.up_proj.weight": w for i, w in enumerate(weights.split(weights.shape[0] // 8))}
    rate: dict[str, float] = {}

    t = time.perf_counter()
    save_sharded(state, tmp / "v1", max_shard_bytes=256 * 2**20)
    rate["serialise"] = size / (time.perf_counter() - t)
    shards = sorted((tmp / "v1").glob("*.safetensors"))

    t = time.perf_counter()
    for f in shards:
        sha256_file(f)
    rate["checksum"] = size / (time.perf_counter() - t)

    # One shard's tensors after a step that moves 3 % of the weights by about 5 % (as
    # bench_weight_deltas): delta encode and decode between the two files.
    from safetensors.torch import save_file

    first = dict(list(state.items())[:2])
    stepped = {}
    for name, w in first.items():
        moved = w.float()
        which = torch.rand(moved.shape) < 0.03
        moved[which] *= 1 + 0.05 * torch.randn(int(which.sum()))
        stepped[name] = moved.to(torch.bfloat16)
    save_file(first, str(tmp / "parent"))
    save_file(stepped, str(tmp / "new"))
    length = (tmp / "new").stat().st_size
    t = time.perf_counter()
    stored = delta.encode(tmp / "new", tmp / "parent", tmp / "delta")
    rate["encode"] = length / (time.perf_counter() - t)
    t = time.perf_counter()
    delta.decode(tmp / "delta", tmp / "parent", tmp / "rebuilt")
    rate["decode"] = length / (time.perf_counter() - t)
    assert sha256_file(tmp / "rebuilt") == sha256_file(tmp / "new")
    rate["delta_stored_share"] = stored / length

    # FP8 blockwise quantisation on the CPU (from float32, as the trainer does): reported, not modelled.
    sample = {k: v.float() for k, v in list(state.items())[:2]}
    t = time.perf_counter()
    fp8.quantize_state_dict(sample)
    rate["quantise_cpu"] = sum(v.numel() * 2 for v in sample.values()) / (time.perf_counter() - t)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0, help="size of the synthetic model the CPU stages are measured on")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kuberl-sync-model-"))
    try:
        rate = measure(args.gib, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = Assumptions()
    scenarios = []
    for name, changes in SCENARIOS:
        a = replace(base, **{k: (rate["delta_stored_share"] if v == "measured" else v) for k, v in changes.items()})
        stages = model(a, rate)
        bound = max(stages, key=stages.get)
        scenarios.append({"scenario": name, "stages_s": stages, "total_s": round(sum(stages.values()), 1),
                          "bound": bound,
                          "assumptions": {k: v for k, v in asdict(a).items() if v != asdict(base)[k]}})
        print(f"{sum(stages.values()):7.1f} s  bound by {bound:12s} {name}")
    out = write_result("sync_scale_model", {
        "measured_here_mb_s_per_core": {k: round(v / 1e6, 1) for k, v in rate.items() if k != "delta_stored_share"},
        "delta_stored_share": round(rate["delta_stored_share"], 4),
        "synthetic_gib": args.gib,
        "version_gb": round(version_bytes(base) / GB, 1),
        "assumptions": asdict(base),
        "scenarios": scenarios,
        "note": "stages add up (no overlap between them); CPU rates measured on one core of this 2-core machine and "
                "multiplied by the cores the assumptions give each node",
    })
    print(out)


if __name__ == "__main__":
    main()
