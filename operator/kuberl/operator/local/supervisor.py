"""Child processes of `kuberl run`: start, restart, stop, and wait for readiness."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kuberl.workloads import localproc


class RunError(Exception):
    """Something the user must fix or look at; the message says what and where."""


def find_binary(name: str) -> str:
    try:
        return localproc.find_binary(name)
    except FileNotFoundError as e:
        raise RunError(str(e)) from None


@dataclass
class Managed:
    """A child process we started, with how to start it again."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    restart: str = "always"  # always | on-failure-limited | never
    proc: subprocess.Popen | None = None
    restarts: int = 0

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True, preexec_fn=localproc.dies_with_parent())  # noqa: PLW1509
        log.close()

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            localproc.stop_group(self.proc, signal.SIGTERM, timeout)

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _wait(check, timeout: float, what: str, proc: Managed) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunError(f"{what} exited with code {proc.poll()} while starting; its log "
                           f"({proc.log_path}):\n{proc.tail()}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise RunError(f"{what} did not become ready within {timeout:.0f}s; its log ({proc.log_path}):\n{proc.tail()}")
