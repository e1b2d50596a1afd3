"""The chart installs on a real API server (schema, RBAC, admission all judge it) and its
workloads become ready on kwok nodes; helm is the pinned one build.sh builds."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.fixtures_cluster import REPO, Kube

pytestmark = pytest.mark.cluster

CHART = REPO / "charts" / "kuberl"


def helm(kube: Kube, *args: str) -> subprocess.CompletedProcess:
    exe = kube.kubectl_path.parent / "helm"
    if not exe.is_file():
        pytest.skip("no pinned helm beside kubectl: run e2e/cluster/build.sh")
    proc = subprocess.run([str(exe), "--kubeconfig", str(kube.kubeconfig), *args],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stderr}"
    return proc


@pytest.mark.skipif(not (CHART / "Chart.yaml").is_file(), reason="no chart yet")
def test_chart_installs_and_its_operator_becomes_available(kube: Kube, namespace: str):
    if not kube.kwok:
        pytest.skip("on a real cluster the operator image must exist; see e2e/kind-up.sh")
    # Release named after the namespace: the chart's cluster-scoped objects (roles,
    # bindings) carry the release name, so parallel or leftover installs never collide.
    release = namespace
    helm(kube, "install", release, str(CHART), "--namespace", namespace, "--wait", "--timeout", "120s")
    try:
        deployments = kube.get_json("deployments", "-n", namespace)["items"]
        assert deployments, "the chart created no deployment"
        for d in deployments:
            assert d["status"].get("availableReplicas", 0) == d["spec"]["replicas"], d["metadata"]["name"]
    finally:
        helm(kube, "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "60s")
