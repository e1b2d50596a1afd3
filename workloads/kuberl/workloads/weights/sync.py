"""Moving policy weights between trainer and engines through the S3 weight store.

The trainer saves the state dict (HF names) as safetensors + config.json in the dtype the
engines serve (``model.dtype``), optionally blockwise FP8 (`weights.fp8`), and publishes it
as one version of the store. The rollout agent fetches a version (sha256-verified) into a
directory its engine loads as it is: SGLang reads the files (FP8 stays FP8); the in-process
torch engine reads them with `read_checkpoint_dir`, which dequantises.

With ``weightStore.fullVersionEvery`` above 1 the trainer keeps the version it published
last on local disk, and the next is stored as deltas against it (`weights.delta`), a whole
version every N; the fetchers rebuild them against the version they already hold.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.weights import fp8
from kuberl.workloads.weights.manifest import LocalVersion, Manifest, delta_allowed, version_name
from kuberl.workloads.weights.stages import StageClock
from kuberl.workloads.weights.s3 import s3_client
from kuberl.workloads.weights.hf_files import save_sharded
from kuberl.workloads.weights.store import WeightStore


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
    stored_bytes: int = 0  # what went over the wire (less than `bytes` for a delta version)
    parent: int | None = None  # the version its deltas are against; None when whole
    local: LocalVersion | None = None  # its files, kept for the next publish's deltas
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (weights.stages.PUBLISH_STAGES)
    manifest: Manifest | None = None  # what the next publish decides a delta parent by (`manifest.delta_allowed`)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FP8_WIRE_DTYPE = "float8_e4m3fn"  # a manifest's dtype when the linear layers went out as FP8 blocks


def engine_state(hf_state: dict[str, torch.Tensor], dtype: str, use_fp8: bool) -> tuple[dict[str, torch.Tensor],
                                                                                        dict[str, str] | None]:
    """The tensors as the engines load them: in ``dtype`` (``model.dtype``), or with ``use_fp8``
    the linear layers quantised to FP8 blocks from the full-precision weights; and, for FP8,
    the tensors kept in high precision with why (`fp8.quantize_state_dict`)."""
    kept: dict[str, str] | None = None
    state = {k: v.detach().contiguous() for k, v in hf_state.items()}
    if use_fp8:
        state, kept = fp8.quantize_state_dict({k: v.float() for k, v in state.items()})
    state = {k: v if v.dtype == fp8.FP8_DTYPE or k.endswith(fp8.SCALE_SUFFIX) else v.to(DTYPES[dtype]).contiguous()
             for k, v in state.items()}
    return state, kept


def publish_policy(store: WeightStore, hf_state: dict[str, torch.Tensor], hf_config: dict, version: int,
                   use_fp8: bool = False, *, dtype: str, keep_in: Path | None = None,
                   last: LocalVersion | None = None, full_every: int = 1) -> Published:
    """Upload HF-named weights and their config as ``version`` (overwriting a version a crashed trainer left).

    Tensors go out in ``dtype`` (what the engines serve, ``model.dtype``); with ``use_fp8``
    the linear layers are quantised from the trainer's full-precision weights first.
    ``keep_in``: a directory where the version's files stay after the upload (the previous
    version's are removed), so the next publish can store deltas against them: against
    ``last``, when ``full_every`` allows (`manifest.delta_allowed`). Without it the files go
    through a temporary directory and every version is whole.
    """
    t0 = time.monotonic()
    clock = StageClock()
    config = {**hf_config, "torch_dtype": dtype}
    with clock.stage("quantise"):
        state, kept = engine_state(hf_state, dtype, use_fp8)
    if use_fp8:
        config["quantization_config"] = fp8.quantization_config(kept)
        dtype = FP8_WIRE_DTYPE
    parent = last if (keep_in is not None and last is not None and last.version != version
                      and delta_allowed(last.manifest, full_every)) else None
    if keep_in is None:
        where = Path(tempfile.mkdtemp(prefix="kuberl-weights-"))
    else:
        where = Path(keep_in) / version_name(version)
        shutil.rmtree(where, ignore_errors=True)  # a version a crashed publish left half-written
    manifest = None
    try:
        with clock.stage("serialise"):
            save_sharded(state, where, config=config)
        manifest = store.publish(version, where, dtype=dtype, overwrite=True, parent=parent, clock=clock)
    finally:
        if manifest is None or keep_in is None:  # failed, or nothing to keep
            shutil.rmtree(where, ignore_errors=True)
    local = None
    if keep_in is not None:
        local = LocalVersion(where, manifest)
        for old in Path(keep_in).glob("v*"):
            if old != where:
                shutil.rmtree(old, ignore_errors=True)
    return Published(store.manifest_uri(version), manifest.total_bytes, time.monotonic() - t0, version, manifest.digest,
                     stored_bytes=manifest.stored_bytes, parent=manifest.parent, local=local, stages=clock.seconds(),
                     manifest=manifest)


def read_checkpoint_dir(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a fetched version, float32, dequantised when it was published in FP8."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    if any(k.endswith(fp8.SCALE_SUFFIX) for k in tensors):
        tensors = fp8.dequantize_state_dict(tensors, dtype=torch.float32)
    return {k: v.float() for k, v in tensors.items()}
