"""`kuberl operator` as a process against the test control plane (as the image runs it)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from tests.support.fixtures_cluster import Kube, wait_until
from tests.support.fixtures_servers import dies_with_parent, free_port


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM (kopf's graceful shutdown), then SIGKILL if it does not exit within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def operator_process(kube: Kube, **extra_env: str):
    """A standalone operator with 1-second reconcile and autoscaler ticks; `extra_env` adds
    or overrides KUBERL_* settings. Yields the process with `log_path` and `metrics_port`."""
    log_path = Path(tempfile.mkdtemp(prefix="kuberl-operator-")) / "operator.log"
    health = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kube.kubeconfig),
        "KUBERL_RECONCILE_INTERVAL": "1",
        "KUBERL_AUTOSCALER_TICK": "1",
        "KUBERL_METRICS_PORT": str(free_port()),
        "KUBERL_HEALTH_PORT": str(health),
        "KUBERL_LOG_FORMAT": "json",
        **extra_env,
    }
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kuberl.operator.cli", "operator", "--standalone"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=dies_with_parent())

    def healthy():
        if proc.poll() is not None:
            raise AssertionError(f"operator exited {proc.returncode}:\n{log_path.read_text()[-5000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_until("operator liveness endpoint", healthy, timeout=60)
        proc.log_path = log_path
        proc.metrics_port = int(env["KUBERL_METRICS_PORT"])
        yield proc
    finally:
        stop_process(proc)
        if os.environ.get("KUBERL_TEST_SHOW_OPERATOR_LOG"):
            print(log_path.read_text()[-20000:])
