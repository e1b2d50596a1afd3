"""Placement on fake GPU nodes: the real scheduler honours the extended resource, the
node-pool selector and the GPU taint; kwok plays the kubelet (Running, Failed, Succeeded)."""

from __future__ import annotations

import pytest

from tests.support.fixtures_cluster import Kube, wait_until

pytestmark = pytest.mark.cluster

GPU_SELECTOR = {"kuberl.io/pool": "gpu"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.fixture(autouse=True)
def _needs_fake_nodes(kube: Kube):
    if not kube.kwok:
        pytest.skip("needs the local control plane's kwok GPU nodes")


def gpu_pod(name: str, *, tolerate: bool = True, gpus: int = 1, annotations: dict | None = None) -> dict:
    spec = {
        "nodeSelector": dict(GPU_SELECTOR),
        "containers": [{"name": "main", "image": "registry.invalid/trainer:test",
                        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        "restartPolicy": "Never",
    }
    if tolerate:
        spec["tolerations"] = [dict(GPU_TOLERATION)]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}


def phase(kube: Kube, ns: str, name: str) -> str:
    return kube.core.read_namespaced_pod(name, ns).status.phase


def test_fake_gpu_nodes_advertise_gpus(kube: Kube):
    nodes = kube.core.list_node(label_selector="kuberl.io/pool=gpu").items
    assert nodes, "no fake GPU nodes"
    for n in nodes:
        assert n.status.allocatable["nvidia.com/gpu"] == "8"
        assert n.metadata.labels["nvidia.com/gpu.present"] == "true"
        assert any(t.key == "nvidia.com/gpu" and t.effect == "NoSchedule" for t in n.spec.taints)


def test_gpu_pod_is_scheduled_on_a_gpu_node_and_runs(kube: Kube, namespace: str):
    kube.core.create_namespaced_pod(namespace, gpu_pod("trainer-0"))
    wait_until("trainer-0 Running", lambda: phase(kube, namespace, "trainer-0") == "Running", timeout=60)
    pod = kube.core.read_namespaced_pod("trainer-0", namespace)
    node = kube.core.read_node(pod.spec.node_name)
    assert node.metadata.labels["kuberl.io/pool"] == "gpu"
    assert all(c.ready for c in pod.status.container_statuses)


def test_gpu_pod_without_toleration_stays_pending(kube: Kube, namespace: str):
    kube.core.create_namespaced_pod(namespace, gpu_pod("untolerated", tolerate=False))

    def unschedulable():
        conds = kube.core.read_namespaced_pod("untolerated", namespace).status.conditions or []
        return any(c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
                   for c in conds)

    wait_until("the scheduler to report Unschedulable", unschedulable, timeout=60)
    pod = kube.core.read_namespaced_pod("untolerated", namespace)
    assert pod.status.phase == "Pending" and not pod.spec.node_name


def test_more_gpus_than_any_node_has_stays_pending(kube: Kube, namespace: str):
    kube.core.create_namespaced_pod(namespace, gpu_pod("greedy", gpus=9))
    wait_until("greedy Unschedulable", lambda: any(
        c.type == "PodScheduled" and c.reason == "Unschedulable"
        for c in kube.core.read_namespaced_pod("greedy", namespace).status.conditions or []), timeout=60)


def test_cpu_pod_lands_on_a_cpu_node(kube: Kube, namespace: str):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "env-0"},
           "spec": {"nodeSelector": {"kuberl.io/pool": "cpu"},
                    "containers": [{"name": "main", "image": "registry.invalid/env:test"}]}}
    kube.core.create_namespaced_pod(namespace, pod)
    wait_until("env-0 Running", lambda: phase(kube, namespace, "env-0") == "Running", timeout=60)


@pytest.mark.parametrize("want", ["Failed", "Succeeded"])
def test_annotation_drives_a_running_pod_to_a_terminal_phase(kube: Kube, namespace: str, want: str):
    kube.core.create_namespaced_pod(namespace, gpu_pod("worker"))
    wait_until("worker Running", lambda: phase(kube, namespace, "worker") == "Running", timeout=60)
    kube.core.patch_namespaced_pod("worker", namespace,
                                   {"metadata": {"annotations": {"kuberl.io/fake-phase": want}}})
    wait_until(f"worker {want}", lambda: phase(kube, namespace, "worker") == want, timeout=60)
    state = kube.core.read_namespaced_pod("worker", namespace).status.container_statuses[0].state
    assert state.terminated.exit_code == (1 if want == "Failed" else 0)


def test_job_pod_annotated_to_succeed_completes_the_job(kube: Kube, namespace: str):
    from kubernetes import client

    batch = client.BatchV1Api(kube.api_client)
    batch.create_namespaced_job(namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"annotations": {"kuberl.io/fake-phase": "Succeeded"}},
            "spec": {"restartPolicy": "Never", "nodeSelector": {"kuberl.io/pool": "cpu"},
                     "containers": [{"name": "main", "image": "registry.invalid/job:test"}]}}}})
    wait_until("job complete", lambda: (batch.read_namespaced_job("once", namespace).status.succeeded or 0) == 1,
               timeout=90)
