"""Where a weight sync's time goes: seconds per stage, for the logs, the ledger and Prometheus.

A sync is trainer side quantise → serialise → checksum (whole files, hashed while they
upload) or encode (delta files, hashed as they are read) → upload → manifest, and engine
side download (or relay: a copy from the node's agent that downloaded it) → reconstruct
(delta files, hashed as they are written) → verify (a second read only for files
downloaded whole) → engine load. The per-file stages run on several file threads at once;
their seconds are added up over the threads, so on a sync of many files they can sum to
more than its wall time. The wall time of the whole is reported beside them
(`Published.seconds`, the swap's seconds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

PUBLISH_STAGES = ("quantise", "serialise", "checksum", "encode", "upload", "manifest")
LOAD_STAGES = ("download", "relay", "reconstruct", "verify", "engine_load")
STAGES = PUBLISH_STAGES + LOAD_STAGES


class StageClock:
    """Adds up the seconds spent in each stage; safe to use from several threads."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        if name not in STAGES:  # the metrics' label values and the dashboard's series are these names
            raise ValueError(f"unknown weight-sync stage {name!r}; one of {STAGES}")
        with self._lock:
            self._seconds[name] = self._seconds.get(name, 0.0) + seconds

    def seconds(self) -> dict[str, float]:
        """The stages that ran, in milliseconds' precision."""
        with self._lock:
            return {name: round(s, 3) for name, s in self._seconds.items()}
