"""The weight versions each rollout agent loaded, kept where the audit reads them later.

The audit (`trainer.ledger.audit`) checks every version an agent loaded against the
versions the trainer published whole, by the digest of the files. An agent's logs do not
outlive its pod, and a restarted container keeps only the previous one's, so each agent
process writes its loads to the run-files location (`observe.uploads.RunFiles`: the
store's ``<checkpoint uri>/run/loads/`` in a cluster, the run's directory under `kuberl run`),
a few files per process (`RECORDS_PER_FILE` records each), the newest rewritten after every
swap. Best effort: a store that is away loses nothing of the serving, and the file is
written again, whole, at the next swap.
"""

from __future__ import annotations

import json
import threading
import time

from kuberl.workloads.logs import get_logger
from kuberl.workloads.observe.uploads import RunFiles

log = get_logger(__name__)

LOADS_DIR = "loads"


RECORDS_PER_FILE = 256  # a file is rewritten whole at each swap: bounded, so a long run's writes stay linear


class LoadRecords:
    """One agent process's loads, in files of `RECORDS_PER_FILE` records each
    (``<agent>-<start ms>-<part>.jsonl``): a swap rewrites only the part it fills, and any
    earlier part whose last write failed."""

    def __init__(self, files: RunFiles, agent_id: str, started: float | None = None):
        self.files = files
        self.prefix = f"{LOADS_DIR}/{agent_id}-{int((started or time.time()) * 1000):013d}"
        self.lines: list[str] = []
        self._unwritten: set[int] = set()  # parts whose newest lines have not reached the location
        self._lock = threading.Lock()  # writes overlap when the store is slow: the last holds every line

    def part_name(self, part: int) -> str:
        return f"{self.prefix}-{part:05d}.jsonl"

    def loaded(self, version: int, digest: str, source: str | None = None) -> bool:
        """Record a load (``source``: where its files came from, `agent.Fetched`); returns
        whether its file reached the location this time."""
        record = {"version": version, "digest": digest, "time": round(time.time(), 3)}
        if source is not None:
            record["source"] = source
        with self._lock:
            self.lines.append(json.dumps(record))
            self._unwritten.add((len(self.lines) - 1) // RECORDS_PER_FILE)
            for part in sorted(self._unwritten):
                lines = self.lines[part * RECORDS_PER_FILE:(part + 1) * RECORDS_PER_FILE]
                try:
                    self.files.put_bytes(self.part_name(part), ("\n".join(lines) + "\n").encode())
                except Exception as e:  # noqa: BLE001 (written whole again at the next swap)
                    log.warning("weight-load record not written; rewritten at the next swap", file=self.part_name(part),
                                error=str(e)[:200])
                    return False
                self._unwritten.discard(part)
        return True


def _records(files: RunFiles) -> list[dict]:
    """Every load record any agent wrote (a torn last line skipped)."""
    records = []
    for name in files.list(LOADS_DIR):
        for line in files.read(name).decode(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                records.append(entry)
    return records


def read_loads(files: RunFiles) -> list[tuple[int, str]]:
    """(version, manifest digest) of every load any agent recorded."""
    loads = []
    for entry in _records(files):
        try:
            loads.append((int(entry["version"]), str(entry["digest"])))
        except (ValueError, KeyError, TypeError):
            continue
    return loads


def load_sources(files: RunFiles) -> dict[str, int]:
    """How many loads took their files from where (`agent.Fetched.source`): store,
    store-claimed (downloaded for the node), relay (copied from the node's download)."""
    counts: dict[str, int] = {}
    for entry in _records(files):
        source = str(entry.get("source", "unrecorded"))
        counts[source] = counts.get(source, 0) + 1
    return counts
