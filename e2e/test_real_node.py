"""The real node, from outside its sandbox: the real-node suite (e2e/in_sandbox) passes
inside one and leaves the machine as it found it; and a sandbox whose owner is SIGKILLed
with a node and a pod running leaves nothing either — no process, mount, link, rule,
kernel setting, cgroup or file.

The sandbox (e2e/sandbox) is what makes a real node safe to run on a shared machine: its
init is tied to its owner, so the kernel ends every process of the node and drops its
mounts, links and rules whatever ends the test. See e2e/README.md.
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from e2e import audit
from e2e.cluster import controlplane
from e2e.images.build import Catalog
from e2e.sandbox import launch, layout
from tests.support.fixtures_cluster import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built() -> Path:
    """Binaries and images, built (or found) outside: the sandbox has no network."""
    bin_dir = controlplane.ensure_built()
    Catalog(bin_dir).build_all(Path(sys.executable).parent)
    return bin_dir


@pytest.mark.timeout(3600)
def test_the_real_node_suite_passes_inside_a_sandbox_and_leaves_nothing(built):
    before = audit.snapshot()
    rc = launch.run([sys.executable, "-m", "pytest", str(REPO / "e2e" / "in_sandbox"), "-p", "no:cacheprovider",
                     "-v", "-rA"])
    assert rc == 0, "the real-node suite failed inside its sandbox (its output is above)"
    assert audit.left_on_host(before) == {}


HOLD_A_NODE = textwrap.dedent("""
    import time
    from e2e.cluster import controlplane
    from e2e.cluster.containerd import PAUSE_IMAGE
    plane = controlplane.ControlPlane(bin=controlplane.bin_dir(), cpu_nodes=0, gpu_nodes=0, real_node=True).start()
    plane.kubectl("run", "sleeper", f"--image={PAUSE_IMAGE}", "--image-pull-policy=Never")
    deadline = time.monotonic() + 180
    while plane.kubectl("get", "pod", "sleeper", "-o", "jsonpath={.status.phase}", check=False).stdout != "Running":
        assert time.monotonic() < deadline, "the pod never ran"
        time.sleep(0.5)
    print("ready", flush=True)
    time.sleep(3600)
""")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _tree(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo += _children(p)
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _readline(stream, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


def test_sigkill_of_the_owner_of_a_running_node_leaves_nothing_within_seconds(built):
    before = audit.snapshot()
    owner = subprocess.Popen([sys.executable, "-m", "e2e.sandbox.launch", "--", sys.executable, "-c", HOLD_A_NODE],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 300
        while line.strip() != "ready" and time.monotonic() < deadline and owner.poll() is None:
            line = _readline(owner.stdout, deadline - time.monotonic())
        assert line.strip() == "ready", "the node and its pod never came up in the sandbox"
        unshare = next(p for p in _children(owner.pid) if _comm(p) == "unshare")
        members = _tree(unshare)
        names = {_comm(p) for p in members}
        assert {"containerd", "kubelet", "kube-apiserver", "pause"} <= names, names
        runs = [d.name for d in (layout.CGROUP_FS / "memory" / layout.CGROUP_PARENT).iterdir() if d.is_dir()]
        pod_cgroups = [p for r in runs for p in (layout.CGROUP_FS / "memory" / layout.CGROUP_PARENT / r).rglob("pod*")]
        assert pod_cgroups, "the pod's cgroup is not under the sandbox run's root"

        t0 = time.monotonic()
        owner.send_signal(signal.SIGKILL)  # no finaliser, no atexit: only the kernel and the reaper
        owner.wait(timeout=10)
        wait_until("every process of the node gone", lambda: not [p for p in members if Path(f"/proc/{p}").exists()
                                                                  and _comm(p) in names], timeout=10, interval=0.1)
        wait_until("nothing of the node left on the host", lambda: audit.left_on_host(before) == {},
                   timeout=max(1.0, 10 - (time.monotonic() - t0)), interval=0.2)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
