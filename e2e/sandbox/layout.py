"""What a sandbox mounts where, and which cgroups a run owns. Pure: the launcher and the
init read the same answers. Stdlib only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")
# Every run's cgroups live under this top-level directory of each hierarchy: outside the
# machine's own per-run cgroup, whose removal a leftover child would block.
CGROUP_PARENT = "kuberl"
# Host /tmp entries of runs: the private /tmp, the reaper's log.
RUNS_TMP = Path("/tmp")
RUN_PREFIX = "kuberl-sandbox-"

# Private tmpfs in the sandbox: where the kubelet, containerd, the CNI plugins and buildah
# write outside the node's work directory. /run first (the init keeps its files there).
PRIVATE_TMPFS = ("/run", "/dev/shm", "/var/lib/cni", "/var/lib/kubelet", "/var/lib/containers",
                 "/var/log/containers", "/var/log/pods", "/etc/cni")

# Host-wide kernel settings the kubelet writes when they differ from what it wants
# (container_manager_linux.go setupKernelTunables). Inside the sandbox each is a regular
# file holding the host's value, bind-mounted over the /proc/sys entry: a write lands in
# the file, never in the kernel.
KERNEL_SETTINGS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")

# The run's cgroup limits: room for the plane, the node and a few pods on a 24 GiB machine,
# not for a runaway that would take the machine with it.
MEMORY_LIMIT_BYTES = 14 * 1024**3
PIDS_LIMIT = 8192


@dataclass(frozen=True)
class CgroupMount:
    path: Path          # /sys/fs/cgroup/memory
    fstype: str         # cgroup | cgroup2
    options: str        # the super options: "rw,memory", "rw,name=systemd", "rw"

    def mount_options(self) -> str:
        return ",".join(o for o in self.options.split(",") if o not in ("rw", "ro")) or ""


def cgroup_mounts(mountinfo: str) -> list[CgroupMount]:
    """The cgroup hierarchies mounted under /sys/fs/cgroup, in mount order."""
    out = []
    for line in mountinfo.splitlines():
        pre, _, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mountpoint, fstype, super_opts = fields[4], tail[0], tail[2]
        if fstype in ("cgroup", "cgroup2") and mountpoint.startswith(str(CGROUP_FS) + "/"):
            out.append(CgroupMount(Path(mountpoint), fstype, super_opts))
    return out


def run_cgroup(run: str) -> str:
    """The kubelet's cgroupRoot for this run, the same path in every hierarchy."""
    return f"/{CGROUP_PARENT}/{run}"


def run_cgroup_dirs(mounts: list[CgroupMount], run: str) -> list[Path]:
    return [m.path / CGROUP_PARENT / run for m in mounts]


def run_tmp(run: str) -> Path:
    """The host directory behind the sandbox's private /tmp (and its bookkeeping)."""
    return RUNS_TMP / f"{RUN_PREFIX}{run}"


def under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False
