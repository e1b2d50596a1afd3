"""PID 1 of a sandbox (started by launch.py through `unshare`): makes the namespaces
private, runs the command, forwards signals, reaps orphans, exits with the command's
status. When it exits the kernel kills every process left in the PID namespace (container
shims and containers included: their namespaces are nested in this one) and drops the
network namespace with its links, routes, iptables/nft rules and sysctls.

    python -m e2e.sandbox.init --run ID --tmp HOSTDIR [--keep PATH ...] -- COMMAND ...
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from e2e.sandbox import ENV_CGROUP, ENV_RUN, MARKER, layout

HOST_TMP_VIEW = Path("/run/kuberl-host-tmp")
KERNEL_FILES = Path("/run/kuberl-kernel")


def _sh(*argv: str) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"sandbox init: {' '.join(argv)}: {proc.stderr.strip()}")


def _mount(*argv: str) -> None:
    # -n: no line in libmount's utab. The first mount on a machine creates /run/mount for it
    # on the host's /run (this sandbox's own /run is not mounted yet, and a mount here is
    # private anyway), and a run would leave that directory behind.
    _sh("mount", "-n", *argv)


def _private_sys(mounts: list[layout.CgroupMount]) -> None:
    # A fresh sysfs shows this network namespace's devices (/sys/class/net); the cgroup
    # hierarchies are the host's, mounted again, so the kubelet finds every controller.
    _mount("-t", "sysfs", "sysfs", "/sys")
    _mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", str(layout.CGROUP_FS))
    for m in mounts:
        m.path.mkdir(parents=True, exist_ok=True)
        opts = m.mount_options()
        _mount("-t", m.fstype, *(["-o", opts] if opts else []), m.fstype, str(m.path))


def _private_tmp(host_dir: Path, keep: list[Path]) -> None:
    """A per-run /tmp; paths under the host's /tmp the command needs (a clone, its venv)
    are bound back in at the same place."""
    HOST_TMP_VIEW.mkdir(parents=True)
    _mount("--bind", "/tmp", str(HOST_TMP_VIEW))
    _mount("--bind", str(host_dir), "/tmp")
    for path in keep:
        if layout.under(path, layout.RUNS_TMP) and path != layout.RUNS_TMP:
            source = HOST_TMP_VIEW / path.relative_to(layout.RUNS_TMP)
            if source.exists():
                path.mkdir(parents=True, exist_ok=True)
                _mount("--rbind", str(source), str(path))
    _sh("umount", "-n", "-l", str(HOST_TMP_VIEW))
    HOST_TMP_VIEW.rmdir()


def _private_kernel_settings() -> None:
    KERNEL_FILES.mkdir(parents=True)
    for key in layout.KERNEL_SETTINGS:
        entry = Path("/proc/sys") / key
        if not entry.exists():
            continue
        copy = KERNEL_FILES / key.replace("/", ".")
        copy.write_text(entry.read_text())
        _mount("--bind", str(copy), str(entry))


def prepare(run: str, host_tmp: Path, keep: list[Path]) -> None:
    cgroups = layout.cgroup_mounts(Path("/proc/self/mountinfo").read_text())  # before /sys changes
    # Nothing mounted from here on may reach the host (unshare --propagation private did
    # this already; asserting it costs nothing).
    _mount("--make-rprivate", "/")
    _private_sys(cgroups)
    for d in layout.PRIVATE_TMPFS:
        mode = "1777" if d == "/dev/shm" else "755"
        _mount("-t", "tmpfs", "-o", f"mode={mode}", "tmpfs", d)
    _private_tmp(host_tmp, keep)
    _private_kernel_settings()
    _sh("ip", "link", "set", "lo", "up")
    _sh("hostname", "kuberl-sandbox")
    MARKER.write_text(run + "\n")


def run_as_init(argv: list[str], env: dict[str, str]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    # PID 1 ignores signals it has no handler for: forward the ones that mean "stop".
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, forward)
    while True:
        try:
            child, status = os.wait()  # reaps orphans too (containerd's shims land here)
        except ChildProcessError:
            return 1
        if child == pid:
            return os.waitstatus_to_exitcode(status)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--tmp", type=Path, required=True)
    ap.add_argument("--keep", type=Path, action="append", default=[])
    ap.add_argument("--cwd", type=Path, default=Path.cwd())
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if os.getpid() != 1:
        sys.exit("e2e.sandbox.init runs as PID 1 of a new PID namespace (use e2e.sandbox.launch)")
    prepare(args.run, args.tmp, args.keep)
    os.chdir(args.cwd)
    env = dict(os.environ, **{ENV_RUN: args.run, ENV_CGROUP: layout.run_cgroup(args.run)})
    rc = run_as_init(command, env)
    sys.exit(rc if rc >= 0 else 128 - rc)


if __name__ == "__main__":
    main()
