"""Which file names a weight manifest may hold: flat names that stay inside the fetch directory.

A manifest is remote data: whoever can write the weight prefix writes it, and every rollout
agent downloads each file it names into its fetch directory. A name such as ``../evil`` or
``/etc/cron.d/x`` would make the fetch write outside that directory, so names are checked
when a manifest is read (before any download) and when one is published (so kuberl never
writes such a manifest). Versions are flat directories, which makes the rule simple: one
path segment, nothing that a filesystem or S3 would read as a separator or a parent.
"""

from __future__ import annotations

from pathlib import Path

RESERVED = frozenset({"manifest.json"})  # the fetch writes the manifest itself, last
INDEX = "model.safetensors.index.json"  # HF loaders open the shards its weight_map names


def unsafe_name_reason(name: object) -> str | None:
    """Why ``name`` may not be a manifest file name, or None when it may."""
    if not isinstance(name, str) or not name:
        return "empty or not a string"
    if name in (".", ".."):
        return "a relative directory reference"
    if "/" in name or "\\" in name:
        return "a path, not a flat file name (contains a separator)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains a control character"
    if name in RESERVED:
        return "reserved for the manifest itself"
    return None


def first_unsafe(names: list[object]) -> tuple[object, str] | None:
    """(name, why) for the first name of a manifest's file list that is not safe, or None."""
    seen: set[object] = set()
    for name in names:
        reason = unsafe_name_reason(name) or ("listed twice" if name in seen else None)
        if reason:
            return name, reason
        seen.add(name)
    return None


def escapes(dest: Path, name: str) -> Path | None:
    """Where ``dest / name`` really resolves when that is outside ``dest`` (a symlink already
    in the fetch directory, say), else None: the last check before a file is written."""
    root = dest.resolve()
    path = (root / name).resolve()
    return path if path.parent != root else None


def index_strays(index: object, names: set[str]) -> list[object]:
    """Shard names an HF ``model.safetensors.index.json`` maps tensors to that are not files of
    the manifest: a loader would open them relative to the version's directory."""
    weight_map = index.get("weight_map", {}) if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        return [weight_map]
    return sorted({f for f in weight_map.values() if f not in names}, key=repr)
