"""The control plane leaves nothing behind: not after a clean stop, not after the Python
process that started it is SIGKILLed (a test run killed by a CI timeout)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from kuberl.workloads.procstat import read_stat
from tests.support.fixtures_cluster import REPO, controlplane, wait_until

pytestmark = pytest.mark.cluster


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    stat = read_stat(pid)
    return stat is not None and stat.state != "Z"


@pytest.fixture(scope="module")
def bin_dir():
    return controlplane.ensure_built()


def test_stop_kills_every_component_and_removes_the_work_dir(bin_dir):
    plane = controlplane.ControlPlane(cpu_nodes=1, gpu_nodes=0, bin=bin_dir).start()
    pids = [c.popen.pid for c in plane.components]
    workdir = plane.workdir
    assert len(pids) == 5 and all(_alive(p) for p in pids)
    plane.stop()
    assert not [p for p in pids if _alive(p)]
    assert not workdir.exists()


def test_sigkilled_owner_takes_the_plane_with_it(bin_dir):
    script = textwrap.dedent(f"""
        import json, sys, time
        sys.path.insert(0, {str(REPO)!r})  # the child is a fresh interpreter started outside pytest
        from e2e.cluster import controlplane
        plane = controlplane.ControlPlane(cpu_nodes=0, gpu_nodes=0).start()
        print(json.dumps([c.popen.pid for c in plane.components]), flush=True)
        time.sleep(600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(owner.stdout.readline())
        assert len(pids) == 5 and all(_alive(p) for p in pids)
        owner.send_signal(signal.SIGKILL)  # no atexit, no finaliser: only PDEATHSIG helps
        owner.wait(timeout=10)
        wait_until("every component gone", lambda: not [p for p in pids if _alive(p)], timeout=15)
    finally:
        owner.kill()
        owner.wait()
