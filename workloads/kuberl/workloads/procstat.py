"""The fields of ``/proc/<pid>/stat`` that kuberl reads, parsed in one place.

The command name sits in parentheses and may itself hold spaces and parentheses, so the
fields are counted from its last ``)``. Standard library only: the machine audit
(``e2e/audit.py``) loads this module on the system python, before any venv exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    state: str  # R, S, D, Z (zombie), ...
    ppid: int
    pgrp: int
    utime_ticks: int  # CPU time in clock ticks (os.sysconf("SC_CLK_TCK") a second)
    stime_ticks: int
    start_ticks: int  # since boot: with the pid, names one process across pid reuse


def parse_stat(pid: int, text: str) -> ProcStat:
    close = text.rindex(")")
    rest = text[close + 2:].split()  # rest[0] is field 3 (state) of proc(5)
    return ProcStat(pid=pid, comm=text[text.index("(") + 1:close], state=rest[0], ppid=int(rest[1]),
                    pgrp=int(rest[2]), utime_ticks=int(rest[11]), stime_ticks=int(rest[12]),
                    start_ticks=int(rest[19]))


def read_stat(pid: int, proc: Path = PROC) -> ProcStat | None:
    """The process's stat, or None when it has gone (or its entry cannot be read)."""
    try:
        return parse_stat(pid, (proc / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def processes(proc: Path = PROC) -> Iterator[ProcStat]:
    """Every process that is still there when its entry is read."""
    for entry in proc.iterdir():
        if entry.name.isdigit() and (stat := read_stat(int(entry.name), proc)) is not None:
            yield stat
