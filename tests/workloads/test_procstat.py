"""/proc/<pid>/stat parsed once (kuberl.workloads.procstat), for the product and the machine audit."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from kuberl.workloads.procstat import parse_stat, processes, read_stat

# proc(5)'s layout, with a command name that holds the separators a naive split trips on.
LINE = "4242 (a) b (c) R 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 98765 0 0 0"


def test_fields_are_counted_from_the_last_parenthesis():
    stat = parse_stat(4242, LINE)
    assert (stat.comm, stat.state, stat.ppid, stat.pgrp) == ("a) b (c", "R", 1, 4242)
    assert (stat.utime_ticks, stat.stime_ticks, stat.start_ticks) == (7, 3, 98765)


def test_a_live_process_is_read_and_a_gone_one_is_none():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        stat = read_stat(child.pid)
        assert stat is not None and (stat.ppid, stat.pgrp) == (os.getpid(), child.pid)
        assert any(p.pid == child.pid for p in processes())
        child.kill()
        deadline = time.monotonic() + 10
        while read_stat(child.pid).state != "Z":  # killed, not reaped: a zombie
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    assert read_stat(child.pid) is None
