"""The workload processes' Prometheus endpoint: ``/metrics`` on $KUBERL_METRICS_PORT.

The operator declares the port (9400, named ``metrics``) on trainer and rollout pods and
sets the variable; `kuberl run` gives each process a free loopback port. 0 turns it off.
"""

from __future__ import annotations

import os

from prometheus_client import start_http_server

from kuberl.workloads.config import METRICS_ADDR_ENV, METRICS_PORT_ENV
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)


def serve_metrics() -> int | None:
    """Start the endpoint if $KUBERL_METRICS_PORT names a port; returns the port."""
    raw = os.environ.get(METRICS_PORT_ENV, "")
    if not raw or int(raw) == 0:
        return None
    port, addr = int(raw), os.environ.get(METRICS_ADDR_ENV, "0.0.0.0")  # noqa: S104 (a pod's scrape port)
    start_http_server(port, addr=addr)
    log.info("metrics endpoint up", port=port, addr=addr, path="/metrics")
    return port
