"""The CI leak audit (e2e/audit.py) notices what a run leaves behind: a process, a cgroup,
a mount, a network link, a kernel setting — and says nothing when nothing was left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from e2e import audit

REPO = Path(__file__).resolve().parents[1]
CGROUP = Path("/sys/fs/cgroup/pids/kuberl-audit-test")
LINK = "kuberl-audit0"


def _compare_exit_code(before: dict, after: dict, tmp_path: Path) -> int:
    (tmp_path / "b.json").write_text(json.dumps(before))
    (tmp_path / "a.json").write_text(json.dumps(after))
    return subprocess.run([sys.executable, "-m", "e2e.audit", "compare", str(tmp_path / "b.json"),
                           str(tmp_path / "a.json"), "--root-pid", str(os.getpid())],
                          cwd=REPO, capture_output=True).returncode


def _leaked_sleeper() -> int:
    # Double fork: the sleeper's parent exits, so it is nobody's child in this tree.
    out = subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
    return int(out.stdout)


def _mount_point() -> Path:
    return Path(tempfile.mkdtemp(prefix="kuberl-audit-mnt-", dir=os.environ.get("KUBERL_AUDIT_DIR")))


LEAKS = {
    "processes": (lambda state: state.update(pid=_leaked_sleeper()), lambda state: os.kill(state["pid"], 9)),
    "cgroups": (lambda state: CGROUP.mkdir(), lambda state: CGROUP.rmdir()),
    "mounts": (lambda state: subprocess.run(["mount", "-n", "-t", "tmpfs", "tmpfs", str(state["dir"])], check=True),
               lambda state: subprocess.run(["umount", "-n", str(state["dir"])], check=True)),
    "links": (lambda state: subprocess.run(["ip", "link", "add", LINK, "type", "bridge"], check=True),
              lambda state: subprocess.run(["ip", "link", "delete", LINK], check=True)),
    "sysctls": (lambda state: state.update(old=Path("/proc/sys/net/ipv4/ip_forward").read_text())
                or Path("/proc/sys/net/ipv4/ip_forward").write_text("0" if state["old"].strip() == "1" else "1"),
                lambda state: Path("/proc/sys/net/ipv4/ip_forward").write_text(state["old"])),
}


@pytest.mark.parametrize("kind", sorted(LEAKS))
def test_the_audit_fails_on_a_deliberate_leak(kind: str, tmp_path: Path):
    leak, undo = LEAKS[kind]
    state = {"dir": _mount_point()}
    try:
        before = audit.snapshot()
        leak(state)
        time.sleep(0.2)
        after = audit.snapshot()
        found = audit.leaks(before, after, root_pid=os.getpid())
        assert found[kind], found
        assert _compare_exit_code(before, after, tmp_path) != 0
    finally:
        try:
            undo(state)
        finally:
            state["dir"].rmdir()


def test_the_audit_passes_when_nothing_is_left(tmp_path: Path):
    before = audit.snapshot()
    subprocess.run(["sleep", "0.1"], check=True)  # a process that came and went
    after = audit.snapshot()
    found = audit.leaks(before, after, root_pid=os.getpid())
    assert {k: v for k, v in found.items() if v and k != "processes"} == {}
    assert not [p for p in found["processes"] if "sleep" in p]


def test_disk_added_over_the_budget_fails(tmp_path: Path):
    before = audit.snapshot()
    after = json.loads(json.dumps(before))
    after["disk"]["avail_bytes"] -= 3 * 10**9
    (tmp_path / "b.json").write_text(json.dumps(before))
    (tmp_path / "a.json").write_text(json.dumps(after))
    over = subprocess.run([sys.executable, "-m", "e2e.audit", "compare", str(tmp_path / "b.json"),
                           str(tmp_path / "a.json"),
                           "--max-disk-gb", "2"], cwd=REPO, capture_output=True, text=True)
    assert over.returncode != 0 and "OVER BUDGET" in over.stdout
    within = subprocess.run([sys.executable, "-m", "e2e.audit", "compare", str(tmp_path / "b.json"),
                             str(tmp_path / "a.json"),
                             "--max-disk-gb", "4"], cwd=REPO, capture_output=True, text=True)
    assert "OVER BUDGET" not in within.stdout
