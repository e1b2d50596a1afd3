"""Run a command inside a throwaway sandbox (root; util-linux `unshare`).

    python -m e2e.sandbox.launch -- python -m pytest e2e/in_sandbox
    python -m e2e.sandbox.launch -- bash        # a shell to start a real node by hand

Before: the sweep of dead runs, then this run's cgroup root (/kuberl/<run> in every
hierarchy, memory and pids limits) and private /tmp. The sandbox's `unshare` dies with
this process (a parent-death signal) and takes its init, hence every process inside, with
it (`--kill-child`). After: the run's cgroups and /tmp are removed — by this process, or
by a reaper that outlives it for that one purpose when this process was SIGKILLed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from e2e.cluster.controlplane import set_parent_death_signal
from e2e.sandbox import runs

REPO = Path(__file__).resolve().parents[2]
UNSHARE = ("unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private",
           "--mount-proc", "--net", "--uts", "--ipc")
STOP_GRACE_S = 20.0
# Each run's reaper, to end and wait for once the launcher has cleaned up itself (an
# orphaned reaper would be a zombie of PID 1 until it gets round to it).
_REAPERS: dict[str, subprocess.Popen] = {}


def _keep_paths() -> list[Path]:
    # A clone and its venv may live under /tmp, which the sandbox replaces: bind them back.
    return sorted({REPO, Path(sys.prefix).resolve(), Path(sys.executable).resolve().parent.parent})


def _init_pid(unshare_pid: int) -> int | None:
    try:
        kids = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def start(command: list[str], run: str | None = None, **popen) -> tuple[subprocess.Popen, str]:
    """Start `command` in a new sandbox; returns its `unshare` process and the run id.
    The caller waits on it, then calls `finish(run)` (the reaper cleans up otherwise)."""
    if os.geteuid() != 0:
        raise PermissionError("a sandbox needs root (namespaces, mounts, cgroups)")
    runs.sweep()
    run = run or f"{os.getpid()}-{secrets.token_hex(3)}"
    home = runs.create(run)
    keep = [a for p in _keep_paths() for a in ("--keep", str(p))]
    argv = [*UNSHARE, sys.executable, "-m", "e2e.sandbox.init", "--run", run, "--tmp", str(home / "tmp"),
            "--cwd", str(Path.cwd()), *keep, "--", *command]
    env = dict(popen.pop("env", None) or os.environ)
    # The sandbox has a /tmp of its own: a TMPDIR of the host's would not exist in it, and
    # a pytest inside keeps its own session directory there.
    env["TMPDIR"] = "/tmp"
    env.pop("KUBERL_SESSION_TMP", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    # preexec_fn: the parent-death signal is per thread; callers start sandboxes from the main one.
    proc = subprocess.Popen(argv, env=env, preexec_fn=set_parent_death_signal, **popen)  # noqa: PLW1509
    (home / "launcher.pid").write_text(f"{os.getpid()} {proc.pid}\n")
    _REAPERS[run] = subprocess.Popen([sys.executable, "-m", "e2e.sandbox.runs", "reap", "--run", run,
                      "--watch", str(os.getpid()), "--watch", str(proc.pid)],
                     env=env, cwd=str(REPO), start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, run


def finish(run: str) -> list[str]:
    """Remove the run's host resources and end its reaper; returns what could not be removed."""
    left = runs.remove(run)
    reaper = _REAPERS.pop(run, None)
    if reaper is not None:
        reaper.terminate()
        reaper.wait(timeout=10)
    return left


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_S) -> int:
    """Ask the command to stop (through the init, which forwards), then end the sandbox."""
    if proc.poll() is None and (init := _init_pid(proc.pid)):
        try:
            os.kill(init, sig)
        except ProcessLookupError:
            pass
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()  # unshare --kill-child: the init, and with it the namespace, dies
        return proc.wait()


def run(command: list[str], **popen) -> int:
    proc, run_id = start(command, **popen)

    def forward(signum, _frame):
        if (init := _init_pid(proc.pid)) is not None:
            try:
                os.kill(init, signum)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        rc = proc.wait()
    except KeyboardInterrupt:  # the terminal sent SIGINT to the command as well
        rc = stop(proc, signal.SIGINT)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        left = finish(run_id)
        if left:
            print(f"sandbox {run_id}: could not remove {left}", file=sys.stderr)
    return rc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command (python -m e2e.sandbox.launch -- COMMAND ...)")
    sys.exit(run(command))


if __name__ == "__main__":
    main()
