"""Trainer checkpoints: the state that must survive a crash, on S3 or a local directory.

A checkpoint is one ``torch.save`` blob ``step-<N>.pt``; ``latest.json`` naming it is
written after the blob, so a crash mid-upload leaves the previous checkpoint in force.

Whoever can write the checkpoint prefix must not be able to run code in the trainer: blobs
are read with the weights-only unpickler (tensors and plain containers/scalars only), and
the names ``latest.json`` gives are checked against the ``step-<N>.pt`` pattern before they
are read or deleted, so the index cannot point outside the prefix. The trainer's state is
plain already (state dicts, dicts of ints/floats/strings, the RNG byte tensor); ``save``
refuses, before writing, a state the weights-only loader would not take back.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from pathlib import Path
from urllib.parse import urlparse

import torch

from kuberl.workloads.logs import get_logger

log = get_logger(__name__)
LATEST = "latest.json"
_BLOB_RE = re.compile(r"step-\d{8,}\.pt")


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint (or its index) holds something the trainer refuses to load."""


def check_blob_name(uri: str, name: object) -> str:
    """``name`` if it is a checkpoint blob name this store writes, else UnsafeCheckpointError.

    Only ``step-<N>.pt``: no separators, so an index cannot make the trainer read or delete
    a file outside the checkpoint prefix.
    """
    if not isinstance(name, str) or not _BLOB_RE.fullmatch(name):
        raise UnsafeCheckpointError(f"checkpoint index at {uri}/{LATEST} names {name!r}, which is not a "
                                    "checkpoint name (step-<N>.pt); refused as unsafe")
    return name


def refusal_reason(message: str) -> str:
    """The line of torch's weights-only refusal that says what was refused.

    Its first line advises loading with ``weights_only=False``, the very thing refused here;
    the line naming the global or opcode is what an operator needs.
    """
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    return next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), "not a weights-only pickle")


def unsafe_globals(blob: bytes) -> list[str]:
    """Classes/functions a torch.save blob would make the unpickler import beyond what
    ``weights_only=True`` allows (empty for tensors and plain containers)."""
    return torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(blob))


class CheckpointStore:
    def __init__(self, uri: str, endpoint: str | None = None, region: str | None = None, keep: int = 2):
        self.uri, self.keep = uri, keep
        url = urlparse(uri)
        self._s3 = url.scheme == "s3"
        if self._s3:
            from kuberl.workloads.weights.s3 import s3_client

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
        # Refused here, not at the next start: a checkpoint the safe loader cannot read back
        # would only be found when the trainer needs it after a crash.
        unsafe = unsafe_globals(buf.getvalue())
        if unsafe:
            raise UnsafeCheckpointError(f"checkpoint state for step {step} holds {unsafe}, which weights-only "
                                        "loading refuses; save tensors and plain types (dict, list, str, int, float)")
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
        return [check_blob_name(self.uri, h) for h in json.loads(raw)["history"]] if raw else []

    def load_latest(self) -> dict | None:
        """The newest checkpoint's state, or None when there is none yet.

        Raises UnsafeCheckpointError naming the checkpoint when its pickle asks for anything
        beyond tensors and plain types (what a planted blob would use to run code).
        """
        raw = self._get(LATEST)
        if raw is None:
            return None
        name = check_blob_name(self.uri, json.loads(raw)["latest"])
        blob = self._get(name)
        if blob is None:
            raise RuntimeError(f"checkpoint index at {self.uri} names {name}, which is missing")
        try:
            return torch.load(io.BytesIO(blob), weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(f"checkpoint {self.uri}/{name} refused as unsafe: its pickle needs more than "
                                        f"tensors and plain types ({refusal_reason(str(e))})") from None
