"""What a weight version is: its manifest (files, sizes, sha256, dtype, quantisation, the
parent its delta files are built on), the errors reading one can raise, a version's files in
a local directory, and the pure decisions over versions (names, what to prune, whether the
next may be a delta). The S3 side is `weights.store`.

A manifest is the one thing every reader trusts: file names are checked (flat, no
``../``; kuberl.workloads.weights.names) as it is parsed, before anything is built from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kuberl.workloads.weights import delta
from kuberl.workloads.weights.names import first_unsafe

MiB = 1024 * 1024

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2  # 2: files may be stored as deltas against a parent version (weights.delta)
_READABLE_FORMATS = (1, 2)


class WeightStoreError(Exception):
    pass


class VersionNotFoundError(WeightStoreError, LookupError):
    pass


class VersionExistsError(WeightStoreError):
    pass


class UnsafeFileNameError(WeightStoreError, ValueError):
    """A manifest names a file that is not a flat name inside its version's directory."""

    def __init__(self, version: object, name: object, reason: str):
        super().__init__(f"weights version {version}: manifest file name {name!r} refused: {reason}")
        self.version, self.name, self.reason = version, name, reason


def check_file_names(version: object, names: list[object]) -> None:
    """Raise UnsafeFileNameError naming the version and the first bad name, if any."""
    bad = first_unsafe(names)
    if bad is not None:
        raise UnsafeFileNameError(version, *bad)


class ParentMissingError(VersionNotFoundError):
    """A delta version whose parent the store no longer has (and the fetcher had no copy of)."""

    def __init__(self, version: int, parent: int, reason: str):
        super().__init__(f"weights version {version} is stored against version {parent}, which is gone: {reason}")
        self.version, self.parent = version, parent


class ChecksumError(WeightStoreError):
    """A fetched file does not match the manifest; ``.file`` names it."""

    def __init__(self, file: str, message: str):
        super().__init__(f"{file}: {message}")
        self.file = file


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int  # of the file as loaded
    sha256: str  # of the file as loaded (a delta's result is checked against it)
    encoding: str = "raw"  # or delta.ENCODING: stored as its changed words against the parent's file of this name
    stored_size: int | None = None  # bytes in the store when not raw

    @property
    def stored_name(self) -> str:
        return self.name if self.encoding == "raw" else self.name + delta.SUFFIX

    @property
    def stored_bytes(self) -> int:
        return self.size if self.stored_size is None else self.stored_size


@dataclass
class Manifest:
    version: int
    files: list[FileEntry]
    dtype: str  # dtype of the high-precision tensors, e.g. "bfloat16"
    quantization: dict[str, Any] | None = None  # config.json's quantization_config, or None
    created_at: float = field(default_factory=time.time)
    format: int = MANIFEST_FORMAT
    meta: dict[str, Any] = field(default_factory=dict)  # step, trainer run id, …
    parent: int | None = None  # the version this one's delta files are against; None: every file whole
    depth: int = 0  # deltas between this version and a whole one (0: whole)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        d = json.loads(data)
        if d.get("format") not in _READABLE_FORMATS:
            raise WeightStoreError(
                f"manifest format {d.get('format')} not understood (want one of {_READABLE_FORMATS})"
            )
        # Before anything is built from the names: every reader of a manifest goes through here.
        check_file_names(d.get("version"), [f.get("name") if isinstance(f, dict) else f for f in d["files"]])
        d["files"] = [FileEntry(**f) for f in d["files"]]
        manifest = cls(**d)
        # Parents come before their children: a fetch that follows them always ends.
        if manifest.parent is not None and not 0 <= manifest.parent < manifest.version:
            raise WeightStoreError(f"weights version {manifest.version}: parent {manifest.parent} is not an earlier "
                                   f"version")
        return manifest

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def stored_bytes(self) -> int:
        """What a fetch of this version alone downloads (its parent not counted)."""
        return sum(f.stored_bytes for f in self.files)

    @property
    def digest(self) -> str:
        """What the version holds, in 16 hex digits: the sha256 of its files' names and digests."""
        listing = "\n".join(f"{f.name} {f.sha256}" for f in sorted(self.files, key=lambda f: f.name))
        return hashlib.sha256(listing.encode()).hexdigest()[:16]


def sha256_file(path: str | os.PathLike, chunk: int = MiB) -> str:
    # hashlib releases the GIL on large updates, so several files hash in parallel threads;
    # one reused buffer, small enough to stay in the CPU's caches (1.2x the rate of 8 MiB reads).
    h = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


def version_name(version: int) -> str:
    # Zero-padded so that S3's lexical listing order is version order.
    if version < 0:
        raise ValueError(f"version must be >= 0, got {version}")
    return f"v{version:08d}"


def plan_prune(complete: list[int], incomplete: list[int], keep: int,
               parent_of: dict[int, int | None] | None = None) -> list[int]:
    """Versions to delete: all complete ones but the newest ``keep`` and the parents their
    deltas are built on (``parent_of``, followed back to a whole version), and incomplete
    ones older than the oldest kept (abandoned uploads; newer ones may still be uploading)."""
    if keep < 1:
        raise ValueError("keep must be >= 1")
    ordered = sorted(complete)
    kept = set(ordered[-keep:])
    for v in list(kept):
        while (parent := (parent_of or {}).get(v)) is not None and parent in complete:
            kept.add(parent)
            v = parent
    drop = [v for v in ordered if v not in kept]
    floor = min(kept) if kept else None
    drop += [v for v in incomplete if floor is not None and v < floor]
    return sorted(drop)


def delta_allowed(parent: Manifest | None, full_every: int) -> bool:
    """Whether the next version may be stored against ``parent``: one exists, and a whole
    version comes every ``full_every`` versions (so a fetcher with nothing local downloads
    at most one whole version and ``full_every - 1`` deltas, and pruning frees chains)."""
    return parent is not None and full_every > 1 and parent.depth + 1 < full_every


@dataclass(frozen=True)
class LocalVersion:
    """A version's files in a local directory, with the manifest they were checked against."""

    path: Path
    manifest: Manifest

    @property
    def version(self) -> int:
        return self.manifest.version


def local_version(path: str | os.PathLike) -> LocalVersion | None:
    """The version in ``path``: its ``manifest.json`` is written last, once every file is checked."""
    try:
        return LocalVersion(Path(path), Manifest.from_json((Path(path) / MANIFEST).read_bytes()))
    except (OSError, ValueError, WeightStoreError, TypeError):
        return None


def local_versions(root: str | os.PathLike) -> list[LocalVersion]:
    """The complete versions in the ``v<N>`` directories under ``root`` (a fetcher's scratch)."""
    found = (local_version(d) for d in sorted(Path(root).glob("v*")) if d.is_dir())
    return [v for v in found if v is not None]
