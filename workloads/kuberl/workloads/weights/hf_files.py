"""Weights as Hugging Face lays them out on disk: safetensors shards, their index, config.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kuberl.workloads.weights.manifest import MiB
from kuberl.workloads.weights.names import INDEX


def save_sharded(tensors: dict[str, Any], out_dir: str | os.PathLike, *, max_shard_bytes: int = 4 * 1024 * MiB,
                 config: dict[str, Any] | None = None) -> list[str]:
    """Write a state dict as HF-style safetensors shards + index (+ config.json).

    Names are kept as given (HF parameter names). Shards are filled in name order up to
    ``max_shard_bytes``. Returns the shard file names.
    """
    from safetensors.torch import save_file  # torch only where tensors are written

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups: list[dict[str, Any]] = [{}]
    size = 0
    for name in sorted(tensors):
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = t.contiguous()
        size += nbytes
    n = len(groups)
    names = [shard_file(i, n) if n > 1 else "model.safetensors" for i in range(n)]
    weight_map = {}
    for fname, group in zip(names, groups, strict=True):
        save_file(group, str(out / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, fname))
    write_index(out, weight_map, sum(t.numel() * t.element_size() for t in tensors.values()), config)
    return names


def shard_file(i: int, n: int) -> str:
    """The HF name of shard ``i`` (from 0) of ``n``."""
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def write_index(out: Path, weight_map: dict[str, str], total_size: int, config: dict[str, Any] | None = None) -> None:
    """The safetensors index (which file holds each tensor) and, given one, config.json."""
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=1,
                                        sort_keys=True))
    if config is not None:
        (out / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
