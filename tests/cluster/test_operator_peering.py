"""Two operator replicas: kopf peering lets the higher priority one act, the other waits."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.test_operator import cpu_job, create, operator_counter, trainer_pods
from tests.support.fixtures_cluster import Kube, wait_until
from tests.support.fixtures_servers import dies_with_parent, free_port
from tests.support.operator_process import stop_process

pytestmark = pytest.mark.cluster


def start_operator(kube: Kube, namespace: str | list[str], priority: int, log_path: Path) -> subprocess.Popen:
    """An operator replica; its Prometheus port is `proc.metrics_port`."""
    metrics_port = free_port()
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig), "KUBERL_RECONCILE_INTERVAL": "1",
           "KUBERL_AUTOSCALER_TICK": "1",
           "KUBERL_METRICS_PORT": str(metrics_port), "KUBERL_HEALTH_PORT": str(free_port()),
           "KUBERL_LOG_FORMAT": "json"}
    with open(log_path, "w") as log:
        scope = [arg for ns in ([namespace] if isinstance(namespace, str) else namespace) for arg in ("-n", ns)]
        proc = subprocess.Popen([sys.executable, "-m", "kuberl.operator.cli", "operator", *scope,
                                 "--peering", "kuberl-test", "--priority", str(priority)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=dies_with_parent())
    proc.metrics_port = metrics_port
    return proc


def install_peering_crds(kube: Kube) -> None:
    crds = subprocess.run([sys.executable, "-m", "kuberl.operator.cli", "operator", "--print-peering-crds"],
                          capture_output=True, text=True, check=True).stdout
    kube.kubectl("apply", "--server-side", "-f", "-", input=crds)
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/kopfpeerings.kopf.dev")


def test_two_watched_namespaces_both_reconcile_with_peering(kube: Kube, namespace: str, nats_server):
    """kopf keeps a peering per served namespace and pauses where its object is missing: the
    operator creates one in every watched namespace, so jobs in the second one run too."""
    install_peering_crds(kube)
    second = f"{namespace}-b"
    kube.core.create_namespace({"metadata": {"name": second, "labels": {"kuberl.io/test": "true"}}})
    wait_until("default service account", lambda: kube.core.list_namespaced_service_account(second).items, timeout=30)
    logs = Path(tempfile.mkdtemp(prefix="kuberl-peering-ns-"))
    operator = start_operator(kube, [namespace, second], 300, logs / "operator.log")
    try:
        for ns in (namespace, second):
            wait_until(f"peering object in {ns}", lambda ns=ns: kube.kubectl(
                "get", "kopfpeering", "kuberl-test", "-n", ns, "--ignore-not-found", "-o", "name").stdout.strip(),
                       timeout=60)
        create(kube, namespace, cpu_job("first-ns", nats_server.url, replicas=1))
        create(kube, second, cpu_job("second-ns", nats_server.url, replicas=1))
        wait_until("job in the first namespace served", lambda: trainer_pods(kube, namespace, "first-ns"), timeout=60)
        wait_until("job in the second namespace served", lambda: trainer_pods(kube, second, "second-ns"), timeout=60)
    finally:
        stop_process(operator)
        kube.core.delete_namespace(second)


def test_two_replicas_elect_one_active(kube: Kube, namespace: str, nats_server):
    if not getattr(kube, "kwok", getattr(kube, "local", False)):
        pytest.skip("needs kwok fake nodes")
    install_peering_crds(kube)
    logs = Path(tempfile.mkdtemp(prefix="kuberl-peering-"))
    leader = start_operator(kube, namespace, 200, logs / "leader.log")
    standby = start_operator(kube, namespace, 100, logs / "standby.log")
    try:
        def both_alive():
            out = kube.kubectl("get", "kopfpeering", "kuberl-test", "-n", namespace, "--ignore-not-found", "-o",
                               "yaml").stdout
            return len((yaml.safe_load(out) or {}).get("status") or {}) == 2  # both replicas keep their keep-alive

        wait_until("both replicas in the peering", both_alive, timeout=90)

        def standby_paused():
            # A standby that starts after the leader logs "Pausing…"; one that starts at the
            # same moment begins paused and stays silent. Either way it has not resumed.
            text = (logs / "standby.log").read_text()
            last_pause, last_resume = text.rfind("Pausing operations in favour of"), text.rfind("Resuming operations")
            return last_resume < last_pause or last_resume == -1

        wait_until("standby paused in favour of the leader", standby_paused, timeout=30)
        create(kube, namespace, cpu_job("elected", nats_server.url, replicas=1))
        wait_until("job served", lambda: trainer_pods(kube, namespace, "elected"), timeout=60)
        assert standby_paused(), "the standby resumed while the leader was alive"
        # The job's first rounds re-assert the ConfigMap once its pool and env exist (the
        # config names them): let the leader finish that before it goes.
        posts = 'kuberl_api_requests_total{verb="POST"}'

        def leader_settled():
            before = operator_counter(leader, posts)
            time.sleep(3)
            return operator_counter(leader, posts) == before

        wait_until("the leader sends no more POSTs", leader_settled, timeout=60)
        standby_posts = operator_counter(standby, posts)  # its start-up: the peering object's create-or-get
        rounds = "kuberl_reconcile_total{"
        assert operator_counter(standby, rounds) == 0, "the standby ran rounds while the leader served"
        leader.terminate()
        leader.wait(timeout=30)
        wait_until("standby resumes when the leader is gone",
                   lambda: "Resuming operations" in (logs / "standby.log").read_text(), timeout=120)
        # The takeover sends nothing for the job the leader served: the children are read
        # from the standby's watches and carry the digest of the manifest asserted last.
        wait_until("the standby reconciles the job a few times", lambda: operator_counter(standby, rounds) >= 5,
                   timeout=60)
        assert operator_counter(standby, posts) == standby_posts
        assert operator_counter(standby, "kuberl_children_created_total") == 0
        create(kube, namespace, cpu_job("after-failover", nats_server.url, replicas=1))
        wait_until("job served by the former standby", lambda: trainer_pods(kube, namespace, "after-failover"),
                   timeout=60)
    finally:
        for p in (leader, standby):
            stop_process(p)
