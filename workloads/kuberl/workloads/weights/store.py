"""The weight store on S3: one immutable, versioned prefix per policy version.

Layout under ``s3://<bucket>/<prefix>/``::

    v00000042/model-00001-of-00004.safetensors   HF parameter names (FP8 or BF16)
    v00000042/model.safetensors.index.json       HF weight_map, so loaders find the shards
    v00000042/config.json                        HF config (+ quantization_config for FP8)
    v00000042/manifest.json                      written LAST: files, sizes, sha256, dtype, quantisation

A version exists for readers only once its ``manifest.json`` does: the manifest is uploaded
after every other file has been acknowledged, so a crashed upload leaves an invisible prefix
(pruned later), never a half-readable version. S3 PUTs are atomic per object, so readers
either see the whole manifest or none. Fetches verify size and sha256 of every file against
the manifest and refuse a bad one naming it. File names are flat and checked
(kuberl.workloads.weights.names) when a manifest is read, before any download, and when one
is published: a manifest naming ``../x`` cannot make a fetch write outside its directory.

Transfers: files go in parallel over a thread pool, and each large file is itself split
into parallel multipart uploads / ranged GETs by boto3's transfer manager (TransferConfig).
The client's connection pool should hold ``file_workers * max_concurrency`` connections
(:func:`s3_client` sizes it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from kuberl.workloads.logs import get_logger
from kuberl.workloads.weights.names import INDEX, escapes, first_unsafe, index_strays

log = get_logger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
_VERSION_RE = re.compile(r"v(\d{8,})/manifest\.json$")
MiB = 1024 * 1024


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


def _check_confined(version: int, manifest: Manifest, dest: Path) -> None:
    # Flat names cannot climb out, but a symlink already in dest could take one elsewhere.
    for entry in manifest.files:
        for name in (entry.name, f".{entry.name}.partial"):
            if (where := escapes(dest, name)) is not None:
                raise UnsafeFileNameError(version, entry.name, f"resolves to {where}, outside the fetch directory {dest.resolve()}")


class ChecksumError(WeightStoreError):
    """A fetched file does not match the manifest; ``.file`` names it."""

    def __init__(self, file: str, message: str):
        super().__init__(f"{file}: {message}")
        self.file = file


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str


@dataclass
class Manifest:
    version: int
    files: list[FileEntry]
    dtype: str  # dtype of the high-precision tensors, e.g. "bfloat16"
    quantization: dict[str, Any] | None = None  # config.json's quantization_config, or None
    created_at: float = field(default_factory=time.time)
    format: int = MANIFEST_FORMAT
    meta: dict[str, Any] = field(default_factory=dict)  # step, trainer run id, …

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        d = json.loads(data)
        if d.get("format") != MANIFEST_FORMAT:
            raise WeightStoreError(f"manifest format {d.get('format')} not understood (want {MANIFEST_FORMAT})")
        # Before anything is built from the names: every reader of a manifest goes through here.
        check_file_names(d.get("version"), [f.get("name") if isinstance(f, dict) else f for f in d["files"]])
        d["files"] = [FileEntry(**f) for f in d["files"]]
        return cls(**d)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def digest(self) -> str:
        """What the version holds, in 16 hex digits: the sha256 of its files' names and digests."""
        listing = "\n".join(f"{f.name} {f.sha256}" for f in sorted(self.files, key=lambda f: f.name))
        return hashlib.sha256(listing.encode()).hexdigest()[:16]


def sha256_file(path: str | os.PathLike, chunk: int = 8 * MiB) -> str:
    # hashlib releases the GIL on large updates, so several files hash in parallel threads.
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_transfer_config() -> TransferConfig:
    return TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=8,
                          use_threads=True)


def s3_client(endpoint_url: str | None = None, *, pool: int = 64, **kwargs):
    """A boto3 S3 client whose connection pool fits parallel multipart transfers."""
    import boto3
    from botocore.config import Config

    cfg = Config(max_pool_connections=pool, retries={"max_attempts": 5, "mode": "standard"},
                 s3={"addressing_style": "path"})
    return boto3.client("s3", endpoint_url=endpoint_url, config=cfg, **kwargs)


def version_name(version: int) -> str:
    # Zero-padded so that S3's lexical listing order is version order.
    if version < 0:
        raise ValueError(f"version must be >= 0, got {version}")
    return f"v{version:08d}"


def plan_prune(complete: list[int], incomplete: list[int], keep: int) -> list[int]:
    """Versions to delete: all complete ones but the newest ``keep``, and incomplete ones older
    than the oldest kept (abandoned uploads; newer ones may still be uploading)."""
    if keep < 1:
        raise ValueError("keep must be >= 1")
    ordered = sorted(complete)
    kept = ordered[-keep:]
    drop = ordered[:-keep]
    floor = kept[0] if kept else None
    drop += [v for v in incomplete if floor is not None and v < floor]
    return sorted(drop)


class WeightStore:
    """Versions of one job's policy weights under ``s3://bucket/prefix/``."""

    def __init__(self, client, bucket: str, prefix: str = "", *, transfer: TransferConfig | None = None,
                 file_workers: int = 4):
        self.client, self.bucket = client, bucket
        self.prefix = prefix.strip("/")
        self.transfer = transfer or default_transfer_config()
        self.file_workers = file_workers

    # ---- naming -----------------------------------------------------------------------

    def _key(self, version: int, name: str = "") -> str:
        base = f"{self.prefix}/{version_name(version)}/" if self.prefix else f"{version_name(version)}/"
        return base + name

    def manifest_uri(self, version: int) -> str:
        return f"s3://{self.bucket}/{self._key(version, MANIFEST)}"

    # ---- listing ----------------------------------------------------------------------

    def _scan(self) -> tuple[list[int], list[int]]:
        """(complete versions, versions with objects but no manifest)."""
        root = f"{self.prefix}/" if self.prefix else ""
        complete, seen = set(), set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(root):]
                m = re.match(r"v(\d{8,})/", rest)
                if not m:
                    continue
                v = int(m.group(1))
                seen.add(v)
                if _VERSION_RE.fullmatch(rest):
                    complete.add(v)
        return sorted(complete), sorted(seen - complete)

    def versions(self) -> list[int]:
        """Complete versions (those with a manifest), oldest first."""
        return self._scan()[0]

    def latest(self) -> int | None:
        v = self.versions()
        return v[-1] if v else None

    def manifest(self, version: int) -> Manifest:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(version, MANIFEST))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise VersionNotFoundError(f"weights version {version} has no manifest at {self.manifest_uri(version)}") from None
        try:
            return Manifest.from_json(body)
        except UnsafeFileNameError as e:  # named by the version asked for, not the one the manifest claims
            raise UnsafeFileNameError(version, e.name, f"{e.reason} (in {self.manifest_uri(version)})") from None

    # ---- publish ----------------------------------------------------------------------

    def publish(self, version: int, src_dir: str | os.PathLike, *, dtype: str = "bfloat16",
                quantization: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
                overwrite: bool = False) -> Manifest:
        """Upload every file of ``src_dir`` (flat) as ``version``, then its manifest.

        ``quantization`` defaults to the ``quantization_config`` of ``src_dir/config.json``.
        """
        src = Path(src_dir)
        files = sorted(p for p in src.iterdir() if p.is_file() and p.name != MANIFEST)
        if not files:
            raise WeightStoreError(f"nothing to publish in {src}")
        check_file_names(version, [p.name for p in files])  # before any upload: never write a manifest readers refuse
        if not overwrite and version in self.versions():
            raise VersionExistsError(f"weights version {version} already published at {self.manifest_uri(version)}")
        if quantization is None and (src / "config.json").exists():
            quantization = json.loads((src / "config.json").read_text()).get("quantization_config")
        t0 = time.perf_counter()

        def put(path: Path) -> FileEntry:
            entry = FileEntry(path.name, path.stat().st_size, sha256_file(path))
            self.client.upload_file(str(path), self.bucket, self._key(version, path.name), Config=self.transfer)
            return entry

        with ThreadPoolExecutor(self.file_workers, thread_name_prefix="kuberl-put") as pool:
            entries = list(pool.map(put, files))
        manifest = Manifest(version=version, files=entries, dtype=dtype, quantization=quantization, meta=meta or {})
        self._write_manifest(version, manifest)  # last: the version becomes visible here
        dt = time.perf_counter() - t0
        log.info("weights published", version=version, files=len(entries), bytes=manifest.total_bytes,
                 seconds=round(dt, 3), uri=self.manifest_uri(version))
        return manifest

    def _write_manifest(self, version: int, manifest: Manifest) -> None:
        check_file_names(version, [f.name for f in manifest.files])
        self.client.put_object(Bucket=self.bucket, Key=self._key(version, MANIFEST), Body=manifest.to_json(),
                               ContentType="application/json")

    # ---- fetch ------------------------------------------------------------------------

    def fetch(self, version: int | None, dest_dir: str | os.PathLike) -> tuple[Path, Manifest]:
        """Download a complete version (latest when None) into ``dest_dir``, verified.

        Each file lands under a temporary name and is renamed only after its size and
        sha256 match the manifest; a mismatch deletes it and raises :class:`ChecksumError`.
        """
        if version is None:
            version = self.latest()
            if version is None:
                raise VersionNotFoundError(f"no weights published under s3://{self.bucket}/{self.prefix}")
        manifest = self.manifest(version)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()

        _check_confined(version, manifest, dest)  # every name, before the first download

        def get(entry: FileEntry) -> None:
            final = dest / entry.name
            tmp = dest / f".{entry.name}.partial"
            self.client.download_file(self.bucket, self._key(version, entry.name), str(tmp), Config=self.transfer)
            size = tmp.stat().st_size
            if size != entry.size:
                tmp.unlink(missing_ok=True)
                raise ChecksumError(entry.name, f"size {size} != manifest {entry.size} (version {version})")
            digest = sha256_file(tmp)
            if digest != entry.sha256:
                tmp.unlink(missing_ok=True)
                raise ChecksumError(entry.name, f"sha256 {digest} != manifest {entry.sha256} (version {version})")
            os.replace(tmp, final)

        with ThreadPoolExecutor(self.file_workers, thread_name_prefix="kuberl-get") as pool:
            for fut in [pool.submit(get, e) for e in manifest.files]:
                fut.result()  # first failure raises; the pool finishes the rest before exiting
        names = {e.name for e in manifest.files}
        if INDEX in names and (strays := index_strays(json.loads((dest / INDEX).read_text()), names)):
            raise UnsafeFileNameError(version, strays[0], f"named by {INDEX} but not a file of the version")
        (dest / MANIFEST).write_bytes(manifest.to_json())
        log.info("weights fetched", version=version, bytes=manifest.total_bytes,
                 seconds=round(time.perf_counter() - t0, 3))
        return dest, manifest

    # ---- prune ------------------------------------------------------------------------

    def prune(self, keep: int) -> list[int]:
        """Keep the newest ``keep`` complete versions; delete older ones and abandoned uploads.

        The manifest goes first, so a version disappears for readers before its shards do.
        """
        complete, incomplete = self._scan()
        doomed = plan_prune(complete, incomplete, keep)
        for v in doomed:
            if v in complete:
                self.client.delete_object(Bucket=self.bucket, Key=self._key(v, MANIFEST))
            keys = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(v)):
                keys += [{"Key": o["Key"]} for o in page.get("Contents", [])]
            for i in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[i : i + 1000], "Quiet": True})
        if doomed:
            log.info("weights pruned", deleted=doomed, kept=[v for v in complete if v not in doomed])
        return doomed


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
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" if n > 1 else "model.safetensors" for i in range(n)]
    weight_map = {}
    for fname, group in zip(names, groups, strict=True):
        save_file(group, str(out / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, fname))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1, sort_keys=True)
    )
    if config is not None:
        (out / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    return names
