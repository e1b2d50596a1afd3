"""Garbage collection and RBAC: the two cluster behaviours the operator leans on for
cleanup (owner references) and least privilege (its own and its workloads' roles)."""

from __future__ import annotations

import pytest
from kubernetes.client.rest import ApiException

from tests.support.fixtures_cluster import Kube, wait_until

pytestmark = pytest.mark.cluster


def _gone(read) -> bool:
    try:
        read()
        return False
    except ApiException as e:
        if e.status == 404:
            return True
        raise


def test_deleting_an_owner_deletes_its_children(kube: Kube, namespace: str):
    owner = kube.core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid,
           "controller": True, "blockOwnerDeletion": True}
    kube.core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "child-config", "ownerReferences": [ref]}})
    kube.core.create_namespaced_pod(namespace, {
        "metadata": {"name": "child-pod", "ownerReferences": [ref]},
        "spec": {"nodeSelector": {"kuberl.io/pool": "cpu"} if kube.kwok else {},
                 "containers": [{"name": "main", "image": "registry.invalid/x:test"}]}})
    kube.core.create_namespaced_config_map(namespace, {"metadata": {"name": "bystander"}})

    kube.core.delete_namespaced_config_map("owner", namespace)  # default: background propagation

    wait_until("child config map collected",
               lambda: _gone(lambda: kube.core.read_namespaced_config_map("child-config", namespace)), timeout=60)
    wait_until("child pod collected",
               lambda: _gone(lambda: kube.core.read_namespaced_pod("child-pod", namespace)), timeout=60)
    kube.core.read_namespaced_config_map("bystander", namespace)  # unowned objects stay


def test_foreground_deletion_waits_for_children(kube: Kube, namespace: str):
    owner = kube.core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid,
           "blockOwnerDeletion": True}
    kube.core.create_namespaced_secret(namespace, {"metadata": {"name": "child", "ownerReferences": [ref]}})
    kube.core.delete_namespaced_config_map("owner", namespace, propagation_policy="Foreground")
    wait_until("owner and child gone", lambda: _gone(
        lambda: kube.core.read_namespaced_config_map("owner", namespace)) and _gone(
        lambda: kube.core.read_namespaced_secret("child", namespace)), timeout=60)


@pytest.fixture
def narrow_sa(kube: Kube, namespace: str) -> str:
    """A service account that may only get/list/watch pods in its own namespace; returns a
    real bound token for it, issued by the API server (TokenRequest)."""
    kube.core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    kube.rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]})
    kube.rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "reader-pod-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]})
    return kube.kubectl("create", "token", "reader", "-n", namespace, "--duration=10m").stdout.strip()


def _status_as(kube: Kube, token: str, path: str) -> int:
    """HTTP status of GET `path` with a bearer token, straight at the API server."""
    return kube.request("GET", path, token=token)[0]


def test_narrow_role_grants_only_what_it_names(kube: Kube, namespace: str, narrow_sa: str):
    token = narrow_sa
    # Granted: the token authenticates and the Role allows listing pods here.
    assert _status_as(kube, token, f"/api/v1/namespaces/{namespace}/pods") == 200
    # Refused: another resource in the same namespace.
    assert _status_as(kube, token, f"/api/v1/namespaces/{namespace}/secrets") == 403
    # Refused: the same resource in another namespace, and cluster-wide.
    assert _status_as(kube, token, "/api/v1/namespaces/kube-system/pods") == 403
    assert _status_as(kube, token, "/api/v1/pods") == 403
    # Refused: a verb the Role does not name.
    can_delete = kube.kubectl("auth", "can-i", "delete", "pods", "-n", namespace,
                              f"--as=system:serviceaccount:{namespace}:reader", check=False)
    assert can_delete.stdout.strip() == "no"


def test_garbage_token_is_unauthenticated(kube: Kube, namespace: str):
    assert _status_as(kube, "not-a-token", f"/api/v1/namespaces/{namespace}/pods") == 401
