"""OCI image layouts written directly (stdlib only): for images that are a directory tree
and nothing else (the pod sandbox's pause image, the Debian base), where a build tool
would only copy the tree once more. Layers are plain tars, so a layer's digest is also its
diff ID and nothing is compressed (the images never leave this machine).

Both consumers read the layout as is: `ctr images import` (a tar of it, streamed) and
buildah (`oci:DIR`). The reference is recorded under both annotations they look for.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

LAYER = "application/vnd.oci.image.layer.v1.tar"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _put_blob(layout: Path, data: bytes | None = None, path: Path | None = None) -> dict:
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    if data is not None:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        size = len(data)
    else:
        digest = _sha256_file(path)
        size = path.stat().st_size
        shutil.move(str(path), blobs / digest)
    return {"digest": f"sha256:{digest}", "size": size}


def tar_tree(tree: Path, out: Path) -> Path:
    """One layer from a directory: numeric owners, xattrs, hard links kept, sorted names,
    no access/change times (the same tree gives the same bytes, hence the same digest).
    Modification times stay: .pyc files are valid only against their sources' mtimes."""
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--sort=name",
                    "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
                    "-C", str(tree), "-cf", str(out), "."], check=True)
    return out


def write_layout(layout: Path, ref: str, layers: list[Path], *, entrypoint: list[str] | None = None,
                 cmd: list[str] | None = None, env: list[str] | None = None, user: str = "",
                 workdir: str = "") -> str:
    """Write an OCI layout with one image; the layer tars are moved in. Returns the manifest digest."""
    if layout.exists():
        shutil.rmtree(layout)
    layout.mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layer_descs = [{"mediaType": LAYER, **_put_blob(layout, path=p)} for p in layers]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            k: v
            for k, v in {
                "Entrypoint": entrypoint,
                "Cmd": cmd,
                "User": user,
                "WorkingDir": workdir,
                "Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            }.items()
            if v
        },
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layer_descs]},
        "history": [{"created_by": "kuberl e2e/images"} for _ in layer_descs],
    }
    config_desc = {"mediaType": CONFIG, **_put_blob(layout, data=json.dumps(config, sort_keys=True).encode())}
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config_desc, "layers": layer_descs}
    manifest_desc = {"mediaType": MANIFEST, **_put_blob(layout, data=json.dumps(manifest, sort_keys=True).encode())}
    manifest_desc["annotations"] = {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}))
    return manifest_desc["digest"]


def _manifest(layout: Path) -> tuple[dict, dict]:
    index = json.loads((layout / "index.json").read_text())
    desc = index["manifests"][0]
    return index, json.loads((layout / "blobs" / "sha256" / desc["digest"].split(":", 1)[1]).read_text())


def reuse_base_layers(layout: Path, bases: list[Path]) -> int:
    """Point ``layout``'s layers at its bases' plain-tar blobs where they hold the same
    content, and drop its own copies. buildah 1.28 gzips every layer it pushes, its
    ``--disable-compression`` notwithstanding: the workload image's layout held a 3.0 GB
    gzip of the 5.4 GB dependency layer beside the plain one, which containerd then ingested
    again on every import (99 s). A layer whose diff ID (its uncompressed digest) is a base
    layer's digest is that base layer: hard-linked, it costs no disk, and containerd, which
    already holds it, skips it. Returns how many layers were replaced."""
    plain = {}
    for base in bases:
        for layer in _manifest(base)[1]["layers"]:
            if layer["mediaType"] == LAYER:
                plain[layer["digest"]] = base / "blobs" / "sha256" / layer["digest"].split(":", 1)[1]
    index, manifest = _manifest(layout)
    blobs = layout / "blobs" / "sha256"
    config = json.loads((blobs / manifest["config"]["digest"].split(":", 1)[1]).read_text())
    replaced = 0
    for i, diff_id in enumerate(config["rootfs"]["diff_ids"]):
        layer, source = manifest["layers"][i], plain.get(diff_id)
        if source is None or layer["digest"] == diff_id:
            continue
        target = blobs / diff_id.split(":", 1)[1]
        if not target.exists():
            target.hardlink_to(source)
        (blobs / layer["digest"].split(":", 1)[1]).unlink()
        manifest["layers"][i] = {"mediaType": LAYER, "digest": diff_id, "size": source.stat().st_size}
        replaced += 1
    if replaced:
        old = index["manifests"][0]
        (blobs / old["digest"].split(":", 1)[1]).unlink()
        new = _put_blob(layout, data=json.dumps(manifest, sort_keys=True).encode())
        index["manifests"][0] = {**old, **new, "mediaType": MANIFEST}
        (layout / "index.json").write_text(json.dumps(index))
    return replaced


def stream_into_containerd(layout: Path, ctr: list[str], have: set[str] = frozenset()) -> None:
    """`ctr images import` of the layout, tarred on the fly (no second copy on disk). Blobs
    containerd holds already (``have``: digests) stay out of the stream: it would read each
    to the end only to skip it (the 5.4 GB dependency layer: 30 s), and unpacking takes
    them from its content store."""
    skip = [f"--exclude=./blobs/sha256/{d.split(':', 1)[1]}" for d in sorted(have)
            if (layout / "blobs" / "sha256" / d.split(":", 1)[1]).exists()]
    tar = subprocess.Popen(["tar", "-C", str(layout), *skip, "-cf", "-", "."], stdout=subprocess.PIPE)
    proc = subprocess.run([*ctr, "images", "import", "--all-platforms", "-"], stdin=tar.stdout,
                          capture_output=True)
    tar.stdout.close()
    tar.wait()
    if proc.returncode or tar.returncode:
        raise RuntimeError(f"importing {layout}: {proc.stderr.decode()[-2000:]}")
