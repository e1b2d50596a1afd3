"""A workload in a container is PID 1, and PID 1 ignores signals it has no handler for:
the trainer and rollout agent stop on SIGTERM anyway (kuberl.workloads.signals). Run as
PID 1 of a fresh pid namespace (unshare, as the kubelet's runtime does); the control run
without the handler shows the kernel's rule the handler exists for."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from kuberl.workloads.signals import EXIT_ON_SIGTERM

SCRIPT = """
import sys, time
import structlog
from kuberl.workloads.signals import exit_on_sigterm
if sys.argv[1] == "handled":
    exit_on_sigterm(structlog.get_logger())
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def _as_pid_one(mode: str) -> tuple[subprocess.Popen, int]:
    outer = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", SCRIPT, mode],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert outer.stdout.readline().strip() == "ready", outer.stderr.read()
    [child] = Path(f"/proc/{outer.pid}/task/{outer.pid}/children").read_text().split()
    assert Path(f"/proc/{child}/status").read_text().count("NSpid") == 1
    nspid = [line for line in Path(f"/proc/{child}/status").read_text().splitlines() if line.startswith("NSpid")][0]
    assert nspid.split()[-1] == "1", nspid  # PID 1 inside its namespace
    return outer, int(child)


@pytest.mark.parametrize("mode", ["handled", "control"])
def test_sigterm_stops_a_pid_one_workload(mode):
    import os
    import signal

    outer, child = _as_pid_one(mode)
    try:
        os.kill(child, signal.SIGTERM)
        if mode == "handled":
            assert outer.wait(timeout=10) == EXIT_ON_SIGTERM, outer.stderr.read()
            assert "stopping on SIGTERM" in outer.stdout.read() + outer.stderr.read()
        else:
            time.sleep(1.5)
            assert outer.poll() is None, "PID 1 without a handler should have ignored SIGTERM"
    finally:
        outer.kill()
        outer.wait()
