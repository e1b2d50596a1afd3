"""containerd for the real node and for loading images: its configuration, the cached root
(content store and snapshots, kept across runs: an image imported once stays) and what
`ctr` does with it. Every caller runs inside a sandbox (e2e/sandbox), so the mounts that
unpacking and containers make vanish with it. Stdlib only.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from e2e.cluster import node_network

PAUSE_IMAGE = "kuberl.local/pause:1"
NAMESPACE = "k8s.io"
LOCAL_REGISTRY = "kuberl.local/"


def cached_root() -> Path:
    cache = Path(os.environ.get("KUBERL_CACHE") or Path.home() / ".cache" / "kuberl")
    return cache / "containerd"


def config(root: Path, state: Path, sock: Path, cni_conf: Path) -> str:
    return f"""version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{state}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Processes here lack CAP_SYS_RESOURCE: runc cannot lower oom_score_adj, and the
  # sandbox fails ("can't get final child's PID from pipe") unless it stops trying.
  restrict_oom_score_adj = true
  # Pod network namespaces under the work directory, so teardown finds every one.
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{state}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{node_network.CNI_BIN_DIR}"
    conf_dir = "{cni_conf}"
"""


def socket_path(workdir: Path) -> Path:
    return workdir / "containerd" / "containerd.sock"


def write_config(workdir: Path) -> tuple[Path, Path]:
    """containerd's config under `workdir` (state, socket, CNI there; root in the cache);
    returns (config file, socket)."""
    root, state, sock = cached_root(), workdir / "containerd" / "state", socket_path(workdir)
    for p in (root, state, sock.parent):
        p.mkdir(parents=True, exist_ok=True)
    node_network.write_cni_config(workdir / "cni" / "net.d", workdir / "cni" / "ipam")
    conf = workdir / "containerd" / "config.toml"
    conf.write_text(config(root, state, sock, workdir / "cni" / "net.d"))
    return conf, sock


class Store:
    """The images and container records of a running containerd, through `ctr`."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock

    def ctr_argv(self) -> list[str]:
        return ["ctr", "--address", str(self.sock), "--namespace", NAMESPACE]

    def ctr(self, *args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*self.ctr_argv(), *args],
                              capture_output=True, check=check, input=input)

    def ready(self) -> bool:
        return self.ctr("version", check=False).returncode == 0

    def images(self) -> set[str]:
        out = self.ctr("images", "list", "--quiet").stdout.decode()
        return {line.strip() for line in out.splitlines() if line.strip()}

    def import_layout(self, layout: Path, ref: str) -> bool:
        """Import an OCI layout (e2e/images) unless `ref` is already here (the root is
        cached, so a second run imports nothing). Returns whether it imported."""
        from e2e.images import oci

        if ref in self.images():
            return False
        if not (layout / "index.json").is_file():
            raise FileNotFoundError(f"{layout} is missing: run e2e/setup.sh (it builds the node's images)")
        oci.stream_into_containerd(layout, self.ctr_argv(), have=self.content())
        return True

    def replace_images(self, layouts: dict[str, Path]) -> tuple[list[str], list[str]]:
        """Import each reference's layout (``layouts``: ref → layout), then prune every other
        kuberl.local image. Returns (the references imported, the image records pruned).
        Import first: pruning the earlier build before would leave no image holding the
        dependency layer, and containerd would delete its 5.4 GB snapshot only to unpack it
        again."""
        imported = [ref for ref, layout in layouts.items() if self.import_layout(layout, ref)]
        return imported, self.prune_images(set(layouts))

    def content(self) -> set[str]:
        """The digests of every blob the content store holds."""
        out = self.ctr("content", "list", "--quiet").stdout.decode()
        return {line.strip() for line in out.splitlines() if line.strip()}

    def forget_containers(self) -> int:
        """Delete every container record (and its rootfs snapshot) from the cached root:
        runc kills containers, but only containerd forgets them, and a run that was killed
        never got to. Images stay. Returns how many were deleted."""
        out = self.ctr("containers", "list", "--quiet", check=False).stdout.decode().split()
        if out:
            self.ctr("containers", "delete", *out, check=False)
        # Work directories of tasks whose shim died with a killed sandbox.
        tasks = cached_root() / "io.containerd.runtime.v2.task" / NAMESPACE
        for work in tasks.iterdir() if tasks.is_dir() else ():
            subprocess.run(["rm", "-rf", str(work)], capture_output=True)
        return len(out)

    def image_targets(self) -> dict[str, str]:
        """Every image record: its name → the digest of the manifest it points at."""
        lines = self.ctr("images", "list").stdout.decode().splitlines()[1:]
        return {cols[0]: cols[2] for cols in (line.split() for line in lines) if len(cols) >= 3}

    def prune_images(self, keep: set[str]) -> list[str]:
        """Remove the image records that point at none of `keep`'s manifests: earlier builds
        of kuberl.local images, and the records the CRI plugin adds for every image it ran,
        named by its config digest (``sha256:…``), which kept each earlier build's layers
        (1.2 GB a workload image) in the cached root. The garbage collector then frees their
        content and snapshots; the CRI plugin names a kept image again when it runs it."""
        targets = self.image_targets()
        kept = {targets[ref] for ref in keep if ref in targets}
        stale = sorted(ref for ref, digest in targets.items() if ref not in keep and digest not in kept
                       and (ref.startswith(LOCAL_REGISTRY) or ref.startswith("sha256:")))
        if stale:
            self.ctr("images", "remove", "--sync", *stale, check=False)
        return stale
