"""Moving policy weights between trainer and engines through the S3 weight store.

The trainer saves the state dict (HF names) as safetensors + config.json in the dtype the
engines serve (``model.dtype``), optionally blockwise FP8 (`weights.fp8`), and publishes it
as one version of the store. The rollout agent fetches a version (sha256-verified) into a
directory its engine loads as it is: SGLang reads the files (FP8 stays FP8); the in-process
torch engine reads them with `read_checkpoint_dir`, which dequantises.
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
    version: int = 0
    digest: str = ""  # Manifest.digest: what an agent that loads this version logs


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def publish_policy(store: WeightStore, hf_state: dict[str, torch.Tensor], hf_config: dict, version: int,
                   use_fp8: bool = False, *, dtype: str) -> Published:
    """Upload HF-named weights and their config as ``version`` (overwriting a version a crashed trainer left).

    Tensors go out in ``dtype`` (what the engines serve, ``model.dtype``); with ``use_fp8``
    the linear layers are quantised from the trainer's full-precision weights first.
    """
    t0 = time.monotonic()
    state = {k: v.detach().contiguous() for k, v in hf_state.items()}
    config = {**hf_config, "torch_dtype": dtype}
    kept: dict[str, str] | None = None
    if use_fp8:
        state, kept = fp8.quantize_state_dict({k: v.float() for k, v in state.items()})
        config["quantization_config"] = fp8.quantization_config(kept)
    state = {k: v if v.dtype == fp8.FP8_DTYPE or k.endswith(fp8.SCALE_SUFFIX) else v.to(DTYPES[dtype]).contiguous()
             for k, v in state.items()}
    if use_fp8:
        dtype = "float8_e4m3fn"
    with tempfile.TemporaryDirectory(prefix="kuberl-weights-") as tmp:
        save_sharded(state, tmp, config=config)
        manifest = store.publish(version, tmp, dtype=dtype, overwrite=True)
    return Published(store.manifest_uri(version), manifest.total_bytes, time.monotonic() - t0, version, manifest.digest)


def read_checkpoint_dir(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a fetched version, float32, dequantised when it was published in FP8."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    if any(k.endswith(fp8.SCALE_SUFFIX) for k in tensors):
        tensors = fp8.dequantize_state_dict(tensors, dtype=torch.float32)
    return {k: v.float() for k, v in tensors.items()}
