"""The real node's sandbox (e2e/sandbox) on its own, without a node: what happens inside
stays inside, and a run's host resources go when it ends — normally, by SIGKILL of its
owner (the reaper), or at the next start (the sweep)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from e2e import audit
from e2e.sandbox import launch, layout, runs

REPO = Path(__file__).resolve().parents[1]

INSIDE = """
set -e
echo 1 > /proc/sys/net/ipv4/ip_forward
echo 10 > /proc/sys/kernel/panic
echo 1 > /proc/sys/kernel/panic_on_oops
ip link add kuberl-probe0 type bridge && ip link set kuberl-probe0 up
iptables -w 5 -N KUBERL-PROBE
mkdir -p /var/lib/cni/probe && touch /tmp/probe /dev/shm/probe
mkdir "/sys/fs/cgroup/memory$KUBERL_SANDBOX_CGROUP/probe"
sleep 1000 &
python3 -c "import e2e.sandbox as s, json, os
print(json.dumps({'inside': s.inside(), 'cgroup': s.cgroup_root(), 'pid': os.getpid()}))"
"""


def _sleepers() -> list[str]:
    return [p["cmd"] for p in audit.snapshot()["processes"].values() if p["cmd"] == "sleep 1000"]


def test_cgroup_mounts_are_read_from_mountinfo():
    text = ("32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
            "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
            "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
            "22 27 0:21 / /proc rw,relatime - proc proc rw\n")
    mounts = layout.cgroup_mounts(text)
    assert [(m.path.name, m.fstype, m.mount_options()) for m in mounts] == [
        ("cpu", "cgroup", "cpu"), ("systemd", "cgroup", "name=systemd"), ("unified", "cgroup2", "")]


def test_what_a_command_does_inside_stays_inside():
    before = audit.snapshot()
    proc = subprocess.run([sys.executable, "-m", "e2e.sandbox.launch", "--", "sh", "-c", INSIDE],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["inside"] and seen["cgroup"].startswith(f"/{layout.CGROUP_PARENT}/")
    assert seen["pid"] != os.getpid() and seen["pid"] < 100  # a PID namespace of its own
    # Kernel settings, links, rules, files, cgroups and the sleeper: all gone with it.
    assert audit.left_on_host(before) == {}
    assert not _sleepers()
    assert not list(layout.RUNS_TMP.glob(layout.RUN_PREFIX + "*"))


def test_the_exit_status_of_the_command_is_the_sandbox_s():
    assert launch.run(["sh", "-c", "exit 7"]) == 7


def test_the_reaper_cleans_up_after_a_sigkilled_owner():
    before = audit.snapshot()
    owner = subprocess.Popen([sys.executable, "-m", "e2e.sandbox.launch", "--", "sh", "-c",
                              "mkdir /sys/fs/cgroup/pids$KUBERL_SANDBOX_CGROUP/pod; echo $$ > "
                              "/sys/fs/cgroup/pids$KUBERL_SANDBOX_CGROUP/pod/cgroup.procs; echo up; sleep 1000"],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "up"
        assert list(layout.RUNS_TMP.glob(layout.RUN_PREFIX + "*"))
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        deadline = time.monotonic() + 10
        while (left := audit.left_on_host(before) or _sleepers()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, left
    finally:
        if owner.poll() is None:
            owner.kill()


def test_the_sweep_removes_a_run_whose_owner_is_gone():
    run = "swept-test"
    home = runs.create(run)
    (home / "launcher.pid").write_text("999999999\n")  # no such process
    assert any(d.exists() for d in layout.run_cgroup_dirs(runs._mounts(), run))
    assert run in runs.sweep()
    assert not home.exists()
    assert not any(d.exists() for d in layout.run_cgroup_dirs(runs._mounts(), run))
