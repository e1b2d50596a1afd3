"""A version published in parts: every rank that owns a share of the weights uploads it,
one rank writes the manifest, last.

A megatron gang holds the model in slices (tensor × pipeline parallel). For a weight sync
each owning rank takes the whole HF tensors of the parameters it owns
(`MegatronPolicy.owned_hf_state`: their slices gathered to it alone, so no rank ever holds
the whole model), converts them to what the engines load (`sync.engine_state`: the
engines' dtype or FP8 blocks), writes them as a file of its own,
``model-<part>-of-<parts>.safetensors`` (the same name every version, so a delta pairs it
with the rank's previous file) and uploads it (`WeightStore.upload_files`). What each part
uploaded travels to rank 0 as a `Part`; rank 0 adds ``config.json`` and the safetensors
index naming every tensor's file, then writes the manifest (`WeightStore.commit`). Until
that last write the version is invisible: a rank that dies before its part landed never
gets there (rank 0 waits on it in a collective, and torchrun ends the gang).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kuberl.workloads.weights import fp8
from kuberl.workloads.weights.manifest import FileEntry, Manifest, version_name
from kuberl.workloads.weights.stages import StageClock
from kuberl.workloads.weights.hf_files import shard_file, write_index
from kuberl.workloads.weights.store import WeightStore
from kuberl.workloads.weights.sync import FP8_WIRE_DTYPE

@dataclass
class Part:
    """What one rank uploaded for a version: its file entries and the tensors in its file."""

    part: int
    file: str  # `hf_files.shard_file`
    entries: list[FileEntry]
    tensors: list[str]
    total_bytes: int  # of its tensors, for the index's total_size
    kept: dict[str, str] | None = None  # FP8: tensors left in high precision, with why
    stages: dict[str, float] = field(default_factory=dict)


def publish_part(store: WeightStore, state: dict[str, torch.Tensor], version: int, part: int, parts: int, *,
                 keep_dir: Path, parent: int | None, kept: dict[str, str] | None = None,
                 clock: StageClock | None = None) -> Part:
    """Write and upload this rank's ``state`` (already `sync.engine_state`) as its part of
    ``version``. Its file stays in ``keep_dir/v<version>/`` for the next version's delta;
    with ``parent``, a file of the parent version still there is what this one pairs with."""
    from safetensors.torch import save_file

    clock = clock or StageClock()
    where = keep_dir / version_name(version)
    shutil.rmtree(where, ignore_errors=True)  # a part a crashed publish left half-written
    where.mkdir(parents=True)
    name = shard_file(part, parts)
    with clock.stage("serialise"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(where / name), metadata={"format": "pt"})
    parent_dir = keep_dir / version_name(parent) if parent is not None else None
    entries = store.upload_files(version, where, parent_dir if parent_dir is not None and parent_dir.is_dir() else None,
                                 clock)
    for old in keep_dir.glob("v*"):  # this version's file is the next one's parent: nothing older is
        if old != where:
            shutil.rmtree(old, ignore_errors=True)
    return Part(part, name, entries, sorted(state), sum(t.numel() * t.element_size() for t in state.values()), kept,
                clock.seconds())


def commit_parts(store: WeightStore, version: int, parts: list[Part], hf_config: dict, *, dtype: str, use_fp8: bool,
                 parent: tuple[int, int] | None, clock: StageClock | None = None) -> Manifest:
    """Rank 0, once every part landed: upload ``config.json`` and the index, then the
    manifest over all of it. ``parent``: (version, depth) of the version the parts' deltas
    are against."""
    clock = clock or StageClock()
    numbers = [p.part for p in parts]
    if not parts or len(set(numbers)) != len(numbers):
        raise ValueError(f"weights version {version}: parts {sorted(numbers)} reported (each once, at least one)")
    files = {e.name for p in parts for e in p.entries}
    weight_map = {name: p.file for p in parts for name in p.tensors}
    if len(weight_map) != sum(len(p.tensors) for p in parts):
        raise ValueError(f"weights version {version}: a tensor is in two parts")
    if missing := sorted(set(weight_map.values()) - files):
        raise ValueError(f"weights version {version}: {missing} not uploaded")
    config = {**hf_config, "torch_dtype": dtype}
    if use_fp8:
        config["quantization_config"] = fp8.quantization_config({k: v for p in parts for k,
                                                                 v in (p.kept or {}).items()})
    side = Path(tempfile.mkdtemp(prefix="kuberl-parts-"))
    try:
        write_index(side, weight_map, sum(p.total_bytes for p in parts), config)
        entries = [e for p in parts for e in p.entries] + store.upload_files(version, side, clock=clock)
    finally:
        shutil.rmtree(side, ignore_errors=True)
    deltas = any(e.encoding != "raw" for e in entries)
    return store.commit(version, entries, dtype=FP8_WIRE_DTYPE if use_fp8 else dtype,
                        quantization=config.get("quantization_config"),
                        parent=parent if deltas else None, clock=clock)
