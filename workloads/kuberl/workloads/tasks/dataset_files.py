"""Where a JSONL dataset's file comes from, as a local path.

``datasets[].source`` schemes besides ``builtin://``:

* ``file:///path/train.jsonl`` (or a bare path) — read as it is;
* ``s3://bucket/key.jsonl`` — downloaded once into the model cache (`policy.sources.model_cache`)
  with the weight store's endpoint and credentials, renamed into place when complete and
  fetched again when its size no longer matches the object's;
* ``hf://org/name[@revision]/path/in/repo.jsonl`` — a file of a dataset snapshot in the
  mounted Hugging Face hub cache, read offline.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from kuberl.workloads.policy.sources import ModelNotFound, hub_snapshot, model_cache


class DatasetNotFound(ModelNotFound):
    """A dataset source that names nothing readable; the message says where it looked."""


def dataset_file(name: str, source: str, *, s3_client=None) -> Path:
    url = urlparse(source)
    scheme = url.scheme or "file"
    if scheme == "file":
        path = Path(url.path if url.scheme else source)
        if not path.is_file():
            raise DatasetNotFound(f"dataset {name}: {path} does not exist")
        return path
    if scheme == "s3":
        return _from_s3(name, url.netloc, url.path.lstrip("/"), s3_client)
    if scheme == "hf":
        try:
            snapshot, inner = hub_snapshot("datasets", url.netloc + url.path, f"dataset {name}")
        except ModelNotFound as e:
            raise DatasetNotFound(str(e)) from None
        path = snapshot / inner
        if not inner or not path.is_file():
            raise DatasetNotFound(f"dataset {name}: source {source!r} names no file in {snapshot} "
                                  "(hf://org/name[@revision]/path/to/file.jsonl)")
        return path
    raise DatasetNotFound(f"dataset {name}: source {source!r}: the scheme must be builtin://, file://, s3:// or hf://")


def _from_s3(name: str, bucket: str, key: str, client) -> Path:
    if client is None:
        from kuberl.workloads.weights.s3 import s3_client

        client = s3_client(os.environ.get("AWS_ENDPOINT_URL"))
    try:
        size = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
    except Exception as e:  # noqa: BLE001 (botocore raises ClientError subclasses per code)
        raise DatasetNotFound(f"dataset {name}: s3://{bucket}/{key} cannot be read ({e})") from None
    digest = hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()[:16]
    final = model_cache() / "datasets" / f"{digest}-{Path(key).name}"
    if final.is_file() and final.stat().st_size == size:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}-", dir=final.parent)
    os.close(fd)
    try:
        client.download_file(bucket, key, tmp)
        if Path(tmp).stat().st_size != size:
            raise OSError(f"s3://{bucket}/{key}: downloaded {Path(tmp).stat().st_size} bytes of {size}")
        os.replace(tmp, final)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return final
