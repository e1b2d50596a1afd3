"""A sandbox run's host resources — its cgroup root in every hierarchy, its private /tmp,
the mount points it had to create — made before the sandbox starts and removed after it
ends, by the launcher, by its reaper when the launcher was SIGKILLed, or by the sweep at
the next start when both were. Every step is idempotent.

    python -m e2e.sandbox.runs reap --run ID --watch PID [--watch PID ...]
    python -m e2e.sandbox.runs sweep
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import time
from pathlib import Path

from e2e.sandbox import layout


def _mounts() -> list[layout.CgroupMount]:
    return layout.cgroup_mounts(Path("/proc/self/mountinfo").read_text())


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError:
        pass  # a knob this kernel does not have; the limit is a safeguard, not a must


def create(run: str) -> Path:
    """The run's /tmp and its cgroup root, with limits; returns the host directory."""
    home = layout.run_tmp(run)
    (home / "tmp").mkdir(parents=True)
    os.chmod(home / "tmp", 0o1777)
    (home / "launcher.pid").write_text(f"{os.getpid()}\n")
    created = []
    for d in map(Path, layout.PRIVATE_TMPFS):
        if not d.exists():
            top = d
            while not top.parent.exists():
                top = top.parent
            d.mkdir(parents=True)
            created.append(str(top))
    (home / "created.json").write_text(json.dumps(created))
    for m in _mounts():
        parent, mine = m.path / layout.CGROUP_PARENT, m.path / layout.CGROUP_PARENT / run
        for d in (parent, mine):
            d.mkdir(exist_ok=True)
            if m.path.name == "cpuset":  # an empty cpuset admits no task
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    if not (d / knob).read_text().strip():
                        _write(d / knob, (d.parent / knob).read_text())
        if m.path.name == "memory":
            _write(mine / "memory.limit_in_bytes", str(layout.MEMORY_LIMIT_BYTES))
        if m.path.name == "pids":
            _write(mine / "pids.max", str(layout.PIDS_LIMIT))
    return home


def _tasks(d: Path) -> list[int]:
    pids = []
    for procs in d.rglob("cgroup.procs"):
        try:
            pids += [int(p) for p in procs.read_text().split()]
        except OSError:
            pass
    return pids


def _thaw(d: Path) -> None:
    for state in d.rglob("freezer.state"):
        _write(state, "THAWED")  # a frozen task ignores SIGKILL until thawed


def _rmdir_tree(d: Path) -> None:
    if not d.is_dir():
        return
    for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        d.rmdir()
    except OSError:
        pass


def remove(run: str, wait: float = 10.0) -> list[str]:
    """Remove what `create` made (and what the kubelet made under it); returns what could
    not be removed."""
    dirs = [d for d in layout.run_cgroup_dirs(_mounts(), run) if d.exists()]
    deadline = time.monotonic() + wait
    for d in dirs:
        _thaw(d)
    while (left := [p for d in dirs for p in _tasks(d)]) and time.monotonic() < deadline:
        for pid in left:  # nothing should be here once the sandbox is gone: ours to end
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    for d in dirs:
        _rmdir_tree(d)
        try:
            d.parent.rmdir()  # /kuberl itself, when no other run uses it
        except OSError:
            pass
    home = layout.run_tmp(run)
    created = home / "created.json"
    if created.is_file():
        for top in sorted(json.loads(created.read_text()), key=len, reverse=True):
            _rmdir_tree(Path(top))
    shutil.rmtree(home, ignore_errors=True)
    return [str(d) for d in dirs if d.exists()] + ([str(home)] if home.exists() else [])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def sweep() -> list[str]:
    """Remove the resources of runs whose launcher and reaper are both gone."""
    runs = {p.name[len(layout.RUN_PREFIX):] for p in layout.RUNS_TMP.glob(layout.RUN_PREFIX + "*")}
    for m in _mounts():
        parent = m.path / layout.CGROUP_PARENT
        runs |= {d.name for d in parent.iterdir() if d.is_dir()} if parent.is_dir() else set()
    swept = []
    for run in sorted(runs):
        pidfile = layout.run_tmp(run) / "launcher.pid"
        try:
            owners = [int(x) for x in pidfile.read_text().split()]
        except (OSError, ValueError):
            owners = []
        if not any(_alive(p) for p in owners):
            remove(run, wait=2.0)
            swept.append(run)
    return swept


def reap(run: str, watch: list[int]) -> None:
    """Wait until every watched process is gone, then remove the run's resources."""
    fds = []
    for pid in watch:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            pass
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    pending = set(fds)
    while pending:
        for fd, _ in poller.poll():
            pending.discard(fd)
            poller.unregister(fd)
    remove(run)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="action", required=True)
    r = sub.add_parser("reap")
    r.add_argument("--run", required=True)
    r.add_argument("--watch", type=int, action="append", default=[])
    sub.add_parser("sweep")
    args = ap.parse_args(argv)
    if args.action == "reap":
        reap(args.run, args.watch)
    else:
        print(json.dumps(sweep()))


if __name__ == "__main__":
    main()
