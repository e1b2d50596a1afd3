"""Shared by the benchmarks: the test fixtures' real servers, result files, medians.

Benchmarks are not tests: run them by hand (``.venv/bin/python bench/bench_buffer.py``).
CI runs the quick ones at toy sizes so they cannot rot (tests/bench/test_bench_smoke.py),
writing their results under ``$KUBERL_BENCH_RESULTS`` instead of over the measured ones.
Each measures kuberl against its raw-library baseline in the same run, alternating rounds
so background load hits both sides alike, and reports the ratio of medians.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_ENV = "KUBERL_BENCH_RESULTS"  # where results go instead of bench/results/ (the smoke runs)
sys.path.insert(
    0, str(HERE.parent)
)  # run as a script: the repo root holds e2e.cluster and the real-node harness (tests.support)

from kuberl.operator.local.servers import NatsServer, SeaweedS3  # noqa: F401


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def write_result(name: str, result: dict) -> Path:
    result = {
        "benchmark": name,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus()},
        **result,
    }
    out = Path(os.environ.get(RESULTS_ENV) or HERE / "results") / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return out


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
