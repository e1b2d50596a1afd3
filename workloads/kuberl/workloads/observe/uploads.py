"""Copy a run's files (TensorBoard event files, a W&B offline run) to where they outlive the pod.

Pods are cattle: ``/var/run/kuberl`` goes with them. The trainer mirrors the directories
that hold its run files to ``run_files_uri`` (an ``s3://`` prefix or a mounted path) after
every checkpoint and at the end. Only files whose size or mtime changed are copied again.
A failed copy is logged and retried at the next sync: losing a plot must not stop training.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

from kuberl.workloads.logs import get_logger

log = get_logger(__name__)


class RunFileSync:
    def __init__(self, uri: str, root: str | Path, subdirs: tuple[str, ...], endpoint: str | None = None, region: str | None = None):
        self.uri, self.root, self.subdirs = uri.rstrip("/"), Path(root), subdirs
        self._seen: dict[str, tuple[int, int]] = {}
        url = urlparse(self.uri)
        self._client = None
        if url.scheme == "s3":
            from kuberl.workloads.weights.store import s3_client

            self._client = s3_client(endpoint, region_name=region or "us-east-1")
            self._bucket, self._prefix = url.netloc, url.path.strip("/")
        else:
            self._dest = Path(url.path if url.scheme == "file" else self.uri)

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

    def sync(self) -> int:
        """Copy what changed since the last sync; returns how many files were copied."""
        copied = 0
        for path, rel, mark in self._changed():
            try:
                if self._client is not None:
                    self._client.upload_file(str(path), self._bucket, f"{self._prefix}/{rel}")
                else:
                    target = self._dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)
            except Exception as e:  # noqa: BLE001 (retried at the next sync)
                log.warning("run file copy failed; retried at the next sync", file=rel, uri=self.uri, error=str(e))
                continue
            self._seen[rel] = mark
            copied += 1
        if copied:
            log.info("run files copied", files=copied, uri=self.uri)
        return copied
