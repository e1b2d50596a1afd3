"""Trainer checkpoints: the state that must survive a crash, on S3 or a local directory.

A checkpoint is one ``torch.save`` blob ``step-<N>.pt``; ``latest.json`` naming it is
written after the blob, so a crash mid-upload leaves the previous checkpoint in force.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from kuberl.workloads.logs import get_logger

log = get_logger(__name__)
LATEST = "latest.json"


class CheckpointStore:
    def __init__(self, uri: str, endpoint: str | None = None, region: str | None = None, keep: int = 2):
        self.uri, self.keep = uri, keep
        url = urlparse(uri)
        self._s3 = url.scheme == "s3"
        if self._s3:
            from kuberl.workloads.weights.store import s3_client

            self._client = s3_client(endpoint, region_name=region or "us-east-1")
            self._bucket, self._prefix = url.netloc, url.path.strip("/")
        else:
            self._dir = Path(url.path if url.scheme == "file" else uri)
            self._dir.mkdir(parents=True, exist_ok=True)

    # ---- raw objects ------------------------------------------------------------------

    def _put(self, name: str, data: bytes) -> None:
        if self._s3:
            self._client.put_object(Bucket=self._bucket, Key=f"{self._prefix}/{name}", Body=data)
        else:
            tmp = self._dir / f".{name}.partial"
            tmp.write_bytes(data)
            os.replace(tmp, self._dir / name)

    def _get(self, name: str) -> bytes | None:
        if self._s3:
            try:
                return self._client.get_object(Bucket=self._bucket, Key=f"{self._prefix}/{name}")["Body"].read()
            except self._client.exceptions.NoSuchKey:
                return None
        path = self._dir / name
        return path.read_bytes() if path.exists() else None

    def _delete(self, name: str) -> None:
        if self._s3:
            self._client.delete_object(Bucket=self._bucket, Key=f"{self._prefix}/{name}")
        else:
            (self._dir / name).unlink(missing_ok=True)

    # ---- checkpoints ------------------------------------------------------------------

    def save(self, step: int, state: dict) -> str:
        buf = io.BytesIO()
        torch.save(state, buf)
        name = f"step-{step:08d}.pt"
        self._put(name, buf.getvalue())
        previous = self._latest_index()
        history = [*[h for h in previous if h != name], name]
        self._put(LATEST, json.dumps({"latest": name, "history": history[-self.keep:]}).encode())  # last: commits it
        for old in history[: -self.keep]:
            self._delete(old)
        log.info("checkpoint saved", step=step, name=name, bytes=buf.tell())
        return name

    def _latest_index(self) -> list[str]:
        raw = self._get(LATEST)
        return json.loads(raw)["history"] if raw else []

    def load_latest(self) -> dict | None:
        raw = self._get(LATEST)
        if raw is None:
            return None
        name = json.loads(raw)["latest"]
        blob = self._get(name)
        if blob is None:
            raise RuntimeError(f"checkpoint index at {self.uri} names {name}, which is missing")
        return torch.load(io.BytesIO(blob), weights_only=False)
