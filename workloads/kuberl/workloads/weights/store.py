"""The weight store on S3: one immutable, versioned prefix per policy version.

Layout under ``s3://<bucket>/<prefix>/``::

    v00000042/model-00001-of-00004.safetensors   HF parameter names (FP8 or BF16)
    v00000042/model.safetensors.index.json       HF weight_map, so loaders find the shards
    v00000042/config.json                        HF config (+ quantization_config for FP8)
    v00000042/manifest.json                      written LAST: files, sizes, sha256, dtype, quantisation
    v00000043/model.safetensors.xor16            a delta version's file: the words that differ from v42's
                                                 (`weights.delta`)

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
(`weights.s3.s3_client` sizes it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from kuberl.workloads.logs import get_logger
from kuberl.workloads.weights import delta, relay
from kuberl.workloads.weights.manifest import (
    MANIFEST,
    ChecksumError,
    FileEntry,
    LocalVersion,
    Manifest,
    MiB,
    ParentMissingError,
    UnsafeFileNameError,
    VersionExistsError,
    VersionNotFoundError,
    WeightStoreError,
    check_file_names,
    plan_prune,
    sha256_file,
    version_name,
)
from kuberl.workloads.weights.names import INDEX, escapes, index_strays
from kuberl.workloads.weights.stages import StageClock

log = get_logger(__name__)

_VERSION_RE = re.compile(r"v(\d{8,})/manifest\.json$")


def _check_confined(version: int, manifest: Manifest, dest: Path) -> None:
    # Flat names cannot climb out, but a symlink already in dest could take one elsewhere.
    for entry in manifest.files:
        for name in (entry.name, f".{entry.name}.partial", f".{entry.stored_name}.partial"):
            if (where := escapes(dest, name)) is not None:
                raise UnsafeFileNameError(version, entry.name,
                                          f"resolves to {where}, outside the fetch directory {dest.resolve()}")


def _timed_checksum(path: Path, clock: StageClock) -> str:
    with clock.stage("checksum"):
        return sha256_file(path)


def default_transfer_config() -> TransferConfig:
    return TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=8,
                          use_threads=True)


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
            raise VersionNotFoundError(
                f"weights version {version} has no manifest at {self.manifest_uri(version)}"
            ) from None
        try:
            return Manifest.from_json(body)
        except UnsafeFileNameError as e:  # named by the version asked for, not the one the manifest claims
            raise UnsafeFileNameError(version, e.name, f"{e.reason} (in {self.manifest_uri(version)})") from None

    # ---- publish ----------------------------------------------------------------------

    def publish(self, version: int, src_dir: str | os.PathLike, *, dtype: str = "bfloat16",
                quantization: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
                overwrite: bool = False, parent: LocalVersion | None = None,
                clock: StageClock | None = None) -> Manifest:
        """Upload every file of ``src_dir`` (flat) as ``version``, then its manifest (also
        written to ``src_dir``, which then is a `LocalVersion` the next publish can use).

        With ``parent`` (the version published before, its files local), a file of the same
        name and size is stored as a delta against the parent's when that saves at least a
        tenth of its bytes (weights.delta); the rest go whole.
        ``quantization`` defaults to the ``quantization_config`` of ``src_dir/config.json``.
        ``clock`` gets the seconds of its stages (checksum, encode, upload, manifest).
        """
        clock = clock or StageClock()
        src = Path(src_dir)
        if not overwrite and version in self.versions():
            raise VersionExistsError(f"weights version {version} already published at {self.manifest_uri(version)}")
        if quantization is None and (src / "config.json").exists():
            quantization = json.loads((src / "config.json").read_text()).get("quantization_config")
        entries = self.upload_files(version, src, parent.path if parent is not None else None, clock)
        deltas = any(e.encoding != "raw" for e in entries)
        return self.commit(version, entries, dtype=dtype, quantization=quantization, meta=meta,
                           parent=(parent.version, parent.manifest.depth) if deltas else None, clock=clock, local=src)

    def upload_files(self, version: int, src_dir: str | os.PathLike, parent_dir: Path | None = None,
                     clock: StageClock | None = None) -> list[FileEntry]:
        """Upload every file of ``src_dir`` (flat) under ``version``, no manifest: one part of
        a version several processes publish (`weights.shards`), or the body of `publish`.
        A file of the same name and size in ``parent_dir`` pairs it for a delta."""
        clock = clock or StageClock()
        src = Path(src_dir)
        files = sorted(p for p in src.iterdir() if p.is_file() and p.name != MANIFEST)
        if not files:
            raise WeightStoreError(f"nothing to publish in {src}")
        check_file_names(version, [p.name for p in files])  # before any upload: never write a manifest readers refuse
        staging = Path(tempfile.mkdtemp(prefix=".kuberl-delta-", dir=src.parent))  # beside src: the same disk

        def put(path: Path) -> FileEntry:
            size = path.stat().st_size
            if parent_dir is not None and delta.pairable(path, parent_dir / path.name):
                encoded, hashed = staging / (path.name + delta.SUFFIX), hashlib.sha256()
                with clock.stage("encode"):  # the file's checksum too, taken as the encoder reads it
                    stored = delta.encode(path, parent_dir / path.name, encoded, digest=hashed)
                digest = hashed.hexdigest()
                if stored <= 0.9 * size:
                    with clock.stage("upload"):
                        self.client.upload_file(str(encoded), self.bucket, self._key(version, encoded.name),
                                                Config=self.transfer)
                    encoded.unlink()
                    return FileEntry(path.name, size, digest, encoding=delta.ENCODING, stored_size=stored)
                encoded.unlink()
            else:  # hashed while it uploads: both read the file from the page cache
                with ThreadPoolExecutor(1, thread_name_prefix="kuberl-hash") as hasher:
                    hashing = hasher.submit(_timed_checksum, path, clock)
                    with clock.stage("upload"):
                        self.client.upload_file(str(path), self.bucket, self._key(version, path.name),
                                                Config=self.transfer)
                    digest = hashing.result()
                return FileEntry(path.name, size, digest)
            with clock.stage("upload"):
                self.client.upload_file(str(path), self.bucket, self._key(version, path.name), Config=self.transfer)
            return FileEntry(path.name, size, digest)

        try:
            with ThreadPoolExecutor(self.file_workers, thread_name_prefix="kuberl-put") as pool:
                return list(pool.map(put, files))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def commit(self, version: int, entries: list[FileEntry], *, dtype: str, quantization: dict[str, Any] | None = None,
               meta: dict[str, Any] | None = None, parent: tuple[int, int] | None = None,
               clock: StageClock | None = None,
               local: Path | None = None) -> Manifest:
        """Write the manifest of ``version`` over files already uploaded (``entries``): the
        version becomes visible here, whole. ``parent``: (version, its depth) when any entry
        is a delta. ``local``: a directory that gets a copy of the manifest (a `LocalVersion`)."""
        clock = clock or StageClock()
        entries = sorted(entries, key=lambda e: e.name)
        check_file_names(version, [e.name for e in entries])
        if len({e.name for e in entries}) != len(entries):
            raise WeightStoreError(f"weights version {version}: two parts uploaded a file of the same name")
        if any(e.encoding != "raw" for e in entries) and parent is None:
            raise WeightStoreError(f"weights version {version}: delta files but no parent version")
        manifest = Manifest(version=version, files=entries, dtype=dtype, quantization=quantization, meta=meta or {},
                            parent=parent[0] if parent else None, depth=parent[1] + 1 if parent else 0)
        with clock.stage("manifest"):
            self._write_manifest(version, manifest)  # last: the version becomes visible here
        if local is not None:
            (local / MANIFEST).write_bytes(manifest.to_json())
        log.info("weights published", version=version, files=len(entries), bytes=manifest.total_bytes,
                 stored_bytes=manifest.stored_bytes, parent=manifest.parent, stages=clock.seconds(),
                 uri=self.manifest_uri(version))
        return manifest

    def _write_manifest(self, version: int, manifest: Manifest) -> None:
        check_file_names(version, [f.name for f in manifest.files])
        self.client.put_object(Bucket=self.bucket, Key=self._key(version, MANIFEST), Body=manifest.to_json(),
                               ContentType="application/json")

    # ---- fetch ------------------------------------------------------------------------

    def fetch(self, version: int | None, dest_dir: str | os.PathLike, have: list[LocalVersion] | tuple = (),
              whole_if_parent_missing: bool = False, clock: StageClock | None = None,
              peer: tuple[str, str] | None = None) -> tuple[Path, Manifest]:
        """`_fetch`; with ``whole_if_parent_missing``, a version whose delta chain the store
        broke (a parent deleted by hand, or by a pruning older than chains) gives way to the
        newest whole version before it, taken from ``have`` when it is there: the caller
        learns which from the manifest it gets back. ``clock`` gets the seconds of its stages
        (download, reconstruct, verify). ``peer``: (url, token) of another agent's relay that
        holds ``version`` whole (`weights.relay`): the files are copied from it, not the store,
        and checked against the store's manifest all the same."""
        clock = clock or StageClock()
        try:
            return self._fetch(version, dest_dir, have, clock, peer)
        except ParentMissingError as e:
            if not whole_if_parent_missing:
                raise
            whole = self.latest_whole(at_most=e.version)
            if whole is None:
                raise
            log.warning("weights version cannot be rebuilt; falling back to the newest whole version",
                        version=e.version,
                        missing_parent=e.parent, whole=whole)
            dest = Path(dest_dir)
            if dest.is_dir() and not (dest / MANIFEST).exists():
                shutil.rmtree(dest, ignore_errors=True)
            local = next((h for h in have if h.version == whole), None)
            if local is not None:
                return local.path, local.manifest
            return self._fetch(whole, dest.parent / version_name(whole), have, clock)

    def latest_whole(self, at_most: int) -> int | None:
        """The newest complete version up to ``at_most`` that is stored whole (no parent)."""
        for v in reversed([v for v in self.versions() if v <= at_most]):
            if self.manifest(v).parent is None:
                return v
        return None

    def _fetch(self, version: int | None, dest_dir: str | os.PathLike, have: list[LocalVersion] | tuple = (),
               clock: StageClock | None = None, peer: tuple[str, str] | None = None) -> tuple[Path, Manifest]:
        """Download a complete version (latest when None) into ``dest_dir``, verified.

        Each file lands under a temporary name and is renamed only after its size and
        sha256 match the manifest; a mismatch deletes it and raises :class:`ChecksumError`.
        A delta file is rebuilt against its parent version's file: from ``have`` (versions
        already local, e.g. the one the engine serves) when it holds the parent, else the
        parent is fetched first (and its own parent, back to a whole version) into a
        directory beside ``dest_dir`` that is removed afterwards. A parent the store no
        longer has raises :class:`ParentMissingError`.
        """
        clock = clock or StageClock()
        if version is None:
            version = self.latest()
            if version is None:
                raise VersionNotFoundError(f"no weights published under s3://{self.bucket}/{self.prefix}")
        manifest = self.manifest(version)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()

        _check_confined(version, manifest, dest)  # every name, before the first download
        parent, fetched_parent = None, None
        if manifest.parent is not None and peer is None:  # a peer serves the version whole
            parent = next((h for h in have if h.version == manifest.parent), None)
            if parent is None:
                where = dest.parent / f".{dest.name}.parent-v{manifest.parent:08d}"
                try:
                    fetched_parent = LocalVersion(*self._fetch(manifest.parent, where, have, clock))
                except VersionNotFoundError as e:
                    shutil.rmtree(where, ignore_errors=True)
                    raise ParentMissingError(version, manifest.parent, str(e)) from None
                parent = fetched_parent

        def check(entry: FileEntry, tmp: Path, streamed: str | None = None) -> None:
            size = tmp.stat().st_size
            if size != entry.size:
                tmp.unlink(missing_ok=True)
                raise ChecksumError(entry.name, f"size {size} != manifest {entry.size} (version {version})")
            with clock.stage("verify"):
                digest = streamed or sha256_file(tmp)  # streamed: taken while the bytes arrived
            if digest != entry.sha256:
                tmp.unlink(missing_ok=True)
                raise ChecksumError(entry.name, f"sha256 {digest} != manifest {entry.sha256} (version {version})")

        def get(entry: FileEntry) -> None:
            tmp = dest / f".{entry.name}.partial"
            streamed = None
            if peer is not None:
                with clock.stage("relay"):
                    streamed = relay.copy_file(*peer, version, entry.name, tmp)
            elif entry.encoding == "raw":
                with clock.stage("download"):
                    self.client.download_file(self.bucket, self._key(version, entry.name), str(tmp),
                                              Config=self.transfer)
            elif entry.encoding == delta.ENCODING:
                encoded = dest / f".{entry.stored_name}.partial"
                with clock.stage("download"):
                    self.client.download_file(self.bucket, self._key(version, entry.stored_name), str(encoded),
                                              Config=self.transfer)
                hashed = hashlib.sha256()
                try:
                    with clock.stage("reconstruct"):  # the result's checksum too, taken as it is written
                        delta.decode(encoded, parent.path / entry.name, tmp, digest=hashed)
                except (OSError, ValueError) as e:
                    tmp.unlink(missing_ok=True)
                    raise ChecksumError(entry.name,
                                        f"delta against version {manifest.parent} does not decode: {e}") from None
                finally:
                    encoded.unlink(missing_ok=True)
                streamed = hashed.hexdigest()
            else:
                raise WeightStoreError(f"weights version {version}: {entry.name} has encoding {entry.encoding!r}, not "
                                       f"understood")
            check(entry, tmp, streamed)
            os.replace(tmp, dest / entry.name)

        try:
            with ThreadPoolExecutor(self.file_workers, thread_name_prefix="kuberl-get") as pool:
                for fut in [pool.submit(get, e) for e in manifest.files]:
                    fut.result()  # first failure raises; the pool finishes the rest before exiting
        finally:
            if fetched_parent is not None:
                shutil.rmtree(fetched_parent.path, ignore_errors=True)
        names = {e.name for e in manifest.files}
        if INDEX in names and (strays := index_strays(json.loads((dest / INDEX).read_text()), names)):
            raise UnsafeFileNameError(version, strays[0], f"named by {INDEX} but not a file of the version")
        (dest / MANIFEST).write_bytes(manifest.to_json())
        log.info("weights fetched", version=version, bytes=manifest.total_bytes, stored_bytes=manifest.stored_bytes,
                 parent=manifest.parent, parent_local=fetched_parent is None and parent is not None,
                 relay=peer[0] if peer else None,
                 seconds=round(time.perf_counter() - t0, 3), stages=clock.seconds())
        return dest, manifest

    # ---- prune ------------------------------------------------------------------------

    def prune(self, keep: int) -> list[int]:
        """Keep the newest ``keep`` complete versions; delete older ones and abandoned uploads.

        The manifest goes first, so a version disappears for readers before its shards do.
        """
        complete, incomplete = self._scan()
        parent_of: dict[int, int | None] = {}
        for v in sorted(complete)[-keep:]:  # the kept versions' chains, back to a whole version
            while v in complete and v not in parent_of:
                parent_of[v] = self.manifest(v).parent
                if parent_of[v] is None:
                    break
                v = parent_of[v]
        doomed = plan_prune(complete, incomplete, keep, parent_of)
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
