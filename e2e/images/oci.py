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


def stream_into_containerd(layout: Path, ctr: list[str]) -> None:
    """`ctr images import` of the layout, tarred on the fly (no second copy on disk)."""
    tar = subprocess.Popen(["tar", "-C", str(layout), "-cf", "-", "."], stdout=subprocess.PIPE)
    proc = subprocess.run([*ctr, "images", "import", "--all-platforms", "-"], stdin=tar.stdout,
                          capture_output=True)
    tar.stdout.close()
    tar.wait()
    if proc.returncode or tar.returncode:
        raise RuntimeError(f"importing {layout}: {proc.stderr.decode()[-2000:]}")
