"""Prometheus metrics of the operator itself (not of training: that lives on the RLJob status)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("kuberl_reconcile_total", "Reconciles run, by kind and trigger.", ["kind", "trigger"])
RECONCILE_ERRORS = Counter("kuberl_reconcile_errors_total", "Reconciles that raised, by kind.", ["kind"])
RECONCILE_SECONDS = Histogram(
    "kuberl_reconcile_duration_seconds", "Time one reconcile took, by kind.", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOBS_BY_PHASE = Gauge("kuberl_rljobs", "RLJobs this operator reconciles, by phase.", ["phase"])
AUTOSCALER_DECISIONS = Counter("kuberl_autoscaler_decisions_total", "Autoscaler decisions, by reason.", ["reason"])
GANG_RESTARTS = Counter("kuberl_gang_restarts_total", "Trainer gangs restarted after a failure.")
API_REQUESTS = Counter("kuberl_api_requests_total", "Kubernetes API requests made by the handlers, by verb.", ["verb"])
CHILDREN_CREATED = Counter("kuberl_children_created_total", "Child objects created, by kind.", ["kind"])


@contextmanager
def reconciling(kind: str, trigger: str) -> Iterator[None]:
    RECONCILES.labels(kind, trigger).inc()
    start = time.perf_counter()
    try:
        yield
    except Exception:
        RECONCILE_ERRORS.labels(kind).inc()
        raise
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - start)


class PhaseBook:
    """Last known phase per job, so the gauge is a count, not a stream of increments."""

    PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed")

    def __init__(self) -> None:
        self._phase: dict[str, str] = {}
        for p in self.PHASES:
            JOBS_BY_PHASE.labels(p).set(0)

    def set(self, uid: str, phase: str) -> None:
        self._phase[uid] = phase
        self._publish()

    def forget(self, uid: str) -> None:
        self._phase.pop(uid, None)
        self._publish()

    def _publish(self) -> None:
        counts = dict.fromkeys(self.PHASES, 0)
        for p in self._phase.values():
            counts[p] = counts.get(p, 0) + 1
        for p, n in counts.items():
            JOBS_BY_PHASE.labels(p).set(n)


def serve(port: int) -> None:
    if port:
        start_http_server(port)
