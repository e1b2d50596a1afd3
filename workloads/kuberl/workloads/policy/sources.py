"""Where a model (weights, config, tokenizer) comes from, as a local HF directory.

``model.source`` (and ``model.tokenizer``) schemes:

* ``builtin://tiny`` — written on first use into the model cache (`policy.tiny.checkpoint`);
* ``file:///path`` (or a bare path) — an HF directory as it is;
* ``s3://bucket/prefix/`` — every object under the prefix, downloaded once into the model
  cache; a completion marker listing each file's size is written last and checked on reuse;
* ``hf://org/name[@revision]`` — a snapshot in the mounted Hugging Face hub cache
  (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``), read offline.

The model cache is ``$KUBERL_MODEL_CACHE``, else ``kuberl-models`` in the temporary directory
(an emptyDir in pods). `python -m kuberl.workloads.policy.sources SOURCE DEST` copies a
model into DEST (the rollout pod's init container, for SGLang).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

BUILTIN_MODELS = {"tiny": "builtin-tiny-v1"}  # the directory name changes when the checkpoint does
MARKER = ".kuberl-complete"
SCHEMES = ("builtin", "file", "s3", "hf")


class ModelNotFound(ValueError):
    """A model source that names nothing readable; the message says where it looked."""


def model_cache() -> Path:
    return Path(os.environ.get("KUBERL_MODEL_CACHE") or Path(tempfile.gettempdir()) / "kuberl-models")


def check_source(source: str) -> None:
    """Refuse a source whose scheme no process can read (before anything starts)."""
    scheme = urlparse(source).scheme or "file"
    if scheme not in SCHEMES:
        raise ModelNotFound(f"model source {source!r}: the scheme must be one of "
                            f"{', '.join(s + '://' for s in SCHEMES)}")
    if scheme == "builtin" and urlparse(source).netloc not in BUILTIN_MODELS:
        raise ModelNotFound(f"unknown builtin model {source!r}; builtin://tiny is the one there is")


def local_model_dir(source: str, *, s3_client=None) -> Path:
    """The HF directory of ``source`` on this machine (fetched or written first if needed)."""
    check_source(source)
    url = urlparse(source)
    scheme = url.scheme or "file"
    if scheme == "builtin":
        return _builtin(url.netloc)
    if scheme == "file":
        path = Path(url.path if url.scheme else source)
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"model source {source!r}: no config.json in {path}")
        return path
    if scheme == "s3":
        return _from_s3(url.netloc, url.path.lstrip("/"), s3_client)
    return _from_hub_cache(url.netloc + url.path)


def _publish_dir(final: Path, write) -> Path:
    """Fill a temporary sibling with ``write(tmp)``, then rename it into place (another
    process may race us: whoever renames first wins, the other's copy is dropped)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        write(tmp)
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _builtin(name: str) -> Path:
    from kuberl.workloads.policy.tiny.checkpoint import write_builtin_tiny

    final = model_cache() / BUILTIN_MODELS[name]
    if (final / MARKER).is_file():
        return final

    def write(tmp: Path) -> None:
        write_builtin_tiny(tmp)
        _write_marker(tmp)

    return _publish_dir(final, write)


def _write_marker(directory: Path) -> None:
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    (directory / MARKER).write_text(json.dumps(files))


def _verified(directory: Path) -> bool:
    """Complete (the marker was written last) and every file it lists has its size."""
    try:
        files = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return all((directory / name).is_file() and (directory / name).stat().st_size == size for name,
               size in files.items())


def _from_s3(bucket: str, prefix: str, client) -> Path:
    if client is None:
        from kuberl.workloads.weights.s3 import s3_client

        client = s3_client(os.environ.get("KUBERL_MODEL_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL"))
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    digest = hashlib.sha256(f"{bucket}/{prefix}".encode()).hexdigest()[:16]
    final = model_cache() / "s3" / f"{bucket}-{digest}"
    if _verified(final):
        return final
    shutil.rmtree(final, ignore_errors=True)  # an earlier download that never completed
    objects = [o for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
               for o in page.get("Contents", [])]
    names = [o["Key"][len(prefix):] for o in objects]
    if "config.json" not in names:
        raise ModelNotFound(f"model source s3://{bucket}/{prefix}: no config.json under that prefix")

    def write(tmp: Path) -> None:
        for obj, name in zip(objects, names, strict=True):
            if "/" in name or name.startswith("."):
                continue  # an HF directory is flat; nested keys are someone else's files
            client.download_file(bucket, obj["Key"], str(tmp / name))
            if (tmp / name).stat().st_size != obj["Size"]:
                raise OSError(f"s3://{bucket}/{obj['Key']}: downloaded {(tmp / name).stat().st_size} bytes of "
                              f"{obj['Size']}")
        _write_marker(tmp)

    return _publish_dir(final, write)


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"


def hub_snapshot(kind: str, name: str, what: str) -> tuple[Path, str]:
    """(snapshot directory, path inside it) of ``org/name[@revision][/path]`` in the hub cache;
    ``kind`` is ``models`` or ``datasets``; ``what`` names the field in errors."""
    repo_rev, _, inner = name.partition("/")
    rest, _, inner = inner.partition("/")
    repo_part = f"{repo_rev}/{rest}"
    repo, _, revision = repo_part.partition("@")
    revision = revision or "main"
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise ModelNotFound(f"{what} hf://{name}: expected "
                            f"hf://org/name[@revision]{'/path' if kind == 'datasets' else ''}")
    root = hub_cache() / f"{kind}--{repo.replace('/', '--')}"
    commit = revision
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        ref = root / "refs" / revision
        if not ref.is_file():
            fetch = f"hf download {'--repo-type dataset ' if kind == 'datasets' else ''}{repo}"
            raise ModelNotFound(f"{what} hf://{name}: {ref} is absent; mount a Hugging Face cache holding it there "
                                f"(HF_HUB_CACHE), pre-fetched with `{fetch}`")
        commit = ref.read_text().strip()
    return root / "snapshots" / commit, inner


def _from_hub_cache(name: str) -> Path:
    snapshot, _ = hub_snapshot("models", name, "model source")
    if not (snapshot / "config.json").is_file():
        raise ModelNotFound(f"model source hf://{name}: no config.json in {snapshot}")
    return snapshot


def copy_model(source: str, dest: str | Path) -> Path:
    """The files of ``source`` in ``dest`` (symlinks of a hub snapshot resolved): hard links
    when the model cache is on the same filesystem (no second copy of the weights), else copies."""
    src = local_model_dir(source)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != MARKER:
            target = dest / f.name
            target.unlink(missing_ok=True)
            try:
                os.link(f.resolve(), target)
            except OSError:
                shutil.copyfile(f, target)
    return dest


if __name__ == "__main__":
    try:
        print(copy_model(sys.argv[1], sys.argv[2]))
    except ModelNotFound as e:
        sys.exit(f"kuberl: {e}")
