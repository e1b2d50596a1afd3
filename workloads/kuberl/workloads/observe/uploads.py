"""Where a run's files outlive its pods, and copying them there.

Pods are cattle: ``/var/run/kuberl`` goes with them. `RunFiles` is the place that stays:
``run_files_uri`` (an ``s3://`` prefix or a mounted path; ``<checkpoint uri>/run`` in a
cluster) or, under `kuberl run`, the run's output directory itself. What goes there: the
TensorBoard event files and W&B offline run (`RunFileSync`, after every checkpoint and at
the end), the trainer's ledger segments and the rollout agents' weight-load records, which
the audit (`kuberl audit`) reads after the processes that wrote them are gone.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)


class RunFiles:
    """Files under an ``s3://bucket/prefix`` or a directory (a path or ``file://`` URI), by relative name."""

    def __init__(self, uri: str, endpoint: str | None = None, region: str | None = None):
        self.uri = str(uri).rstrip("/")
        url = urlparse(self.uri)
        self._client = None
        if url.scheme == "s3":
            from kuberl.workloads.weights.s3 import s3_client

            self._client = s3_client(endpoint, region_name=region or "us-east-1")
            self._bucket, self._prefix = url.netloc, url.path.strip("/")
        else:
            self._dir = Path(url.path if url.scheme == "file" else self.uri)

    def _key(self, rel: str) -> str:
        return f"{self._prefix}/{rel}" if self._prefix else rel

    def put_file(self, path: Path, rel: str) -> None:
        if self._client is not None:
            self._client.upload_file(str(path), self._bucket, self._key(rel))
            return
        target = self._dir / rel
        if target.resolve() == Path(path).resolve():
            return  # the run's output directory is the location (kuberl run)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)

    def put_bytes(self, rel: str, data: bytes) -> None:
        if self._client is not None:
            self._client.put_object(Bucket=self._bucket, Key=self._key(rel), Body=data)
            return
        target = self._dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)  # a reader never sees half a file

    def list(self, folder: str) -> list[str]:
        """The relative names of the files directly in ``folder``, sorted."""
        if self._client is None:
            base = self._dir / folder
            return sorted(f"{folder}/{p.name}" for p in base.glob("*") if p.is_file() and not p.name.startswith(".")) \
                if base.is_dir() else []
        names, prefix = [], self._key(folder.rstrip("/") + "/")
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=prefix,
                                                                           Delimiter="/"):
            names += [obj["Key"][len(self._key("")):] for obj in page.get("Contents", [])]
        return sorted(names)

    def read(self, rel: str) -> bytes:
        if self._client is None:
            return (self._dir / rel).read_bytes()
        return self._client.get_object(Bucket=self._bucket, Key=self._key(rel))["Body"].read()


def run_files(cfg: WorkloadConfig) -> RunFiles:
    """The job's run-files location: ``run_files_uri`` in a cluster, the output directory under `kuberl run`."""
    return RunFiles(cfg.run_files_uri or cfg.output_dir, cfg.weight_store.endpoint, cfg.weight_store.region)


class RunFileSync:
    """Mirrors ``subdirs`` of ``root`` to a `RunFiles` location. Only files whose size or
    mtime changed are copied again. A failed copy is logged and retried at the next sync:
    losing a plot must not stop training (``strict`` raises instead, for callers that retry)."""

    def __init__(self, uri: str, root: str | Path, subdirs: tuple[str, ...], endpoint: str | None = None,
                 region: str | None = None):
        self.files = RunFiles(uri, endpoint, region)
        self.uri, self.root, self.subdirs = self.files.uri, Path(root), subdirs
        self._seen: dict[str, tuple[int, int]] = {}

    def _changed(self) -> list[tuple[Path, str, tuple[int, int]]]:
        out = []
        for sub in self.subdirs:
            base = self.root / sub
            if not base.is_dir():
                continue
            for path in sorted(p for p in base.rglob("*") if p.is_file() and not p.is_symlink()):
                rel = path.relative_to(self.root).as_posix()
                st = path.stat()
                mark = (st.st_size, st.st_mtime_ns)
                if self._seen.get(rel) != mark:
                    out.append((path, rel, mark))
        return out

    def sync(self, strict: bool = False) -> int:
        """Copy what changed since the last sync; returns how many files were copied."""
        copied = 0
        for path, rel, mark in self._changed():
            try:
                self.files.put_file(path, rel)
            except Exception as e:  # noqa: BLE001 (retried at the next sync)
                if strict:
                    raise
                log.warning("run file copy failed; retried at the next sync", file=rel, uri=self.uri, error=str(e))
                continue
            self._seen[rel] = mark
            copied += 1
        if copied:
            log.info("run files copied", files=copied, uri=self.uri)
        return copied
