"""Moving policy weights between trainer and engines through the S3 weight store.

The trainer saves the state dict (HF names) as safetensors + config.json, optionally
blockwise FP8 (kuberl.workloads.fp8), and publishes it as one version of the store; the
rollout agent fetches a version (sha256-verified) and dequantises what was quantised.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.weights import fp8
from kuberl.workloads.weights.store import WeightStore, s3_client, save_sharded


def weight_store(cfg: WorkloadConfig) -> WeightStore:
    client = s3_client(cfg.weight_store.endpoint, region_name=cfg.weight_store.region or "us-east-1")
    return WeightStore(client, cfg.weight_store.bucket, cfg.weight_prefix, file_workers=2)


@dataclass(frozen=True)
class Published:
    uri: str  # of the version's manifest
    bytes: int  # of the version's files
    seconds: float  # serialise + upload, manifest included


def publish_policy(store: WeightStore, hf_state: dict[str, torch.Tensor], hf_config: dict, version: int,
                   use_fp8: bool = False) -> Published:
    """Upload HF-named weights and their config as ``version`` (overwriting a version a crashed trainer left)."""
    t0 = time.monotonic()
    state = {k: v.detach().float().contiguous() for k, v in hf_state.items()}
    config = dict(hf_config)
    dtype = "float32"
    if use_fp8:
        state, kept = fp8.quantize_state_dict(state)
        config["quantization_config"] = fp8.quantization_config(kept)
        dtype = "float8_e4m3fn"
    with tempfile.TemporaryDirectory(prefix="kuberl-weights-") as tmp:
        save_sharded(state, tmp, config=config)
        manifest = store.publish(version, tmp, dtype=dtype, overwrite=True)
    return Published(store.manifest_uri(version), manifest.total_bytes, time.monotonic() - t0)


def fetch_policy(store: WeightStore, version: int) -> dict[str, torch.Tensor]:
    """The tensors of one version, dequantised to float32 when it was published in FP8."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory(prefix="kuberl-fetch-") as tmp:
        path, manifest = store.fetch(version, tmp)
        tensors: dict[str, torch.Tensor] = {}
        for f in sorted(Path(path).glob("*.safetensors")):
            tensors.update(load_file(str(f)))
    if manifest.quantization:
        tensors = fp8.dequantize_state_dict(tensors, dtype=torch.float32)
    return {k: v.float() for k, v in tensors.items()}
