"""The repository's Dockerfiles, built by buildah with no daemon and no registry: the
bases come from OCI layouts (e2e/images/oci.py), the result goes to one. Root only."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from e2e.images import oci

# What the Dockerfiles COPY (.dockerignore admits no more); their content keys the image.
CONTEXT = ("pyproject.toml", "README.md", "operator/kuberl", "workloads/kuberl")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PIP_CONF = "/etc/pip.conf"
LINKS = Path("/run/kuberl-oci")


def context_key(repo: Path, dockerfile: Path) -> str:
    h = hashlib.sha256(dockerfile.read_bytes())
    for entry in CONTEXT:
        root = repo / entry
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            h.update(str(f.relative_to(repo)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


# Failures of the build machinery, not of the Dockerfile, that a second try gets past:
# runc (under buildah's chroot runner) sealing its memfd copy while the kernel still holds it.
TRANSIENT_FAILURES = ("sealing memfd copy: Device or resource busy",)


def is_transient(output: str) -> bool:
    return any(marker in output for marker in TRANSIENT_FAILURES)


def _buildah(storage: Path, *args: str) -> subprocess.CompletedProcess:
    argv = ["buildah", "--root", str(storage / "root"), "--runroot", str(storage / "run"),
            "--storage-driver", "overlay", *args]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv[7:9])} failed "
                           f"({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def layout_ref(layout: Path) -> str:
    return json.loads((layout / "index.json").read_text())["manifests"][0]["annotations"]["io.containerd.image.name"]


def _has(storage: Path, ref: str) -> bool:
    out = _buildah(storage, "images", "--format", "{{.Name}}:{{.Tag}}").stdout.split()
    return ref in out


def build(storage: Path, repo: Path, dockerfile: Path, ref: str, build_args: dict[str, str],
          bases: dict[str, Path], out: Path) -> None:
    for layout in bases.values():
        base_ref = layout_ref(layout)
        if not _has(storage, base_ref):
            # buildah names a pulled layout after its path, and a path with a dot-led
            # component (~/.cache) is no valid name: pull through a plain-named link.
            link = LINKS / layout.name
            LINKS.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(layout)
            image_id = _buildah(storage, "pull", "--quiet", f"oci:{link}").stdout.split()[-1]
            _buildah(storage, "tag", image_id, base_ref)
            _buildah(storage, "rmi", f"localhost{link}")
    args = [f"--build-arg={k}={v}" for k, v in build_args.items()]
    # RUN steps see the machine's CA bundle and pip configuration (a proxy in front of
    # PyPI may need both); mounted for the build only, never part of the image.
    for path in (CA_BUNDLE, PIP_CONF):
        if Path(path).is_file():
            args.append(f"--volume={path}:{path}:ro")
    # chroot isolation shares the machine's network: RUN steps reach PyPI as pip would here.
    for attempt in (1, 2):
        try:
            _buildah(storage, "bud", "--isolation", "chroot", "--pull-never", "--layers=false",
                     "-f", str(dockerfile), "-t", ref, *args, str(repo))
            break
        except RuntimeError as e:
            if attempt == 2 or not is_transient(str(e)):
                raise
            print(f"images: {ref}: buildah failed on a known transient; building once more", file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    _buildah(storage, "push", "--quiet", "--disable-compression", ref, f"oci:{out}:{ref}")
    oci.reuse_base_layers(out, list(bases.values()))
    # containerd names an imported image by this annotation (buildah writes only ref.name).
    index = json.loads((out / "index.json").read_text())
    for m in index["manifests"]:
        m.setdefault("annotations", {})["io.containerd.image.name"] = ref
    (out / "index.json").write_text(json.dumps(index))
    _buildah(storage, "rmi", ref)  # the layout is the copy we keep
