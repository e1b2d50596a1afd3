"""The operator's Kubernetes I/O: plain-dict REST calls for the few kinds it touches.

Requests go through the official client's ApiClient (auth, TLS, kubeconfig or in-cluster
config) but bodies stay plain camelCase dicts, as the builders produce them: no model
classes to convert to and from on every reconcile of every job.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import kubernetes

from kuberl.operator.adapters.metrics import API_REQUESTS
from kuberl.operator.api.constants import API_VERSION

MERGE_PATCH = "application/merge-patch+json"

_PLURALS = {
    ("v1", "Pod"): "pods",
    ("v1", "Service"): "services",
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Secret"): "secrets",
    ("apps/v1", "Deployment"): "deployments",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    (API_VERSION, "RLJob"): "rljobs",
    (API_VERSION, "RolloutPool"): "rolloutpools",
    (API_VERSION, "AgentEnv"): "agentenvs",
}


class KubeError(Exception):
    def __init__(self, status: int, method: str, path: str, body: str):
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status
        try:
            self.server_message = str(json.loads(body).get("message") or body[:500])
        except (ValueError, AttributeError):
            self.server_message = body[:500]

    @property
    def is_refusal(self) -> bool:
        """The server refused the object itself (invalid, or denied by admission such as Pod
        Security): retrying the same object cannot succeed. 403 from RBAC looks the same; the
        message tells them apart."""
        return self.status in (400, 403, 422)


def plural(api_version: str, kind: str) -> str:
    return _PLURALS[(api_version, kind)]


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{quote(namespace)}/{plural(api_version, kind)}"


def object_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    return f"{collection_path(api_version, kind, namespace)}/{quote(name)}"


def api_client_from_environment(pool_size: int = 32) -> kubernetes.client.ApiClient:
    """In a pod: the service account; elsewhere: $KUBECONFIG or ~/.kube/config.

    The HTTP connection pool is sized for kopf's handler threads (urllib3's default of 10
    makes busy operators open and discard a connection per request).
    """
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return kubernetes.client.ApiClient(configuration)


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient, timeout: float = 30.0,
                 observe: Callable[[dict[str, Any]], None] | None = None):
        """`observe` sees every object a get, create or patch answers with (as the server has it then)."""
        self.api = api_client
        self.timeout = timeout
        self.observe = observe or (lambda obj: None)

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                query: dict[str, str] | None = None) -> tuple[int, dict[str, Any] | None]:
        url = self.api.configuration.host + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json", "Content-Type": content_type}
        self.api.update_params_for_auth(headers, None, ["BearerToken"], path, method, body)
        API_REQUESTS.labels(method).inc()
        response = self.api.rest_client.request(method, url, headers=headers, body=body, _request_timeout=self.timeout)
        data = response.read() if hasattr(response, "read") else response.data
        text = data.decode() if isinstance(data, bytes) else (data or "")
        status = response.status
        if status >= 400 and status not in (404, 409):
            raise KubeError(status, method, path, text)
        return status, (json.loads(text) if text else None)

    # -- typed helpers -------------------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        status, obj = self.request("GET", object_path(api_version, kind, namespace, name))
        if status == 404:
            return None
        self.observe(obj)
        return obj

    def list(self, api_version: str, kind: str, namespace: str,
             selector: dict[str, str] | None = None) -> list[dict[str, Any]]:
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in selector.items())} if selector else None
        status, obj = self.request("GET", collection_path(api_version, kind, namespace), query=query)
        return (obj or {}).get("items", []) if status == 200 else []

    def create(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create, or return the existing object of that name: (object, created)."""
        meta = obj["metadata"]
        path = collection_path(obj["apiVersion"], obj["kind"], meta["namespace"])
        status, created = self.request("POST", path, obj)
        if status == 409:
            existing = self.get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
            if existing is None:  # deleted between the two calls; the next round creates it
                return obj, False
            return existing, False
        self.observe(created)
        return created, True

    def patch(self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any], *,
              subresource: str | None = None) -> dict[str, Any] | None:
        path = object_path(api_version, kind, namespace, name) + (f"/{subresource}" if subresource else "")
        status, obj = self.request("PATCH", path, patch, content_type=MERGE_PATCH)
        if status == 409:
            raise KubeError(status, "PATCH", path, json.dumps(obj))
        if status == 404:
            return None
        self.observe(obj)
        return obj

    def delete(self, api_version: str, kind: str, namespace: str, name: str, *, grace_seconds: int | None = None,
               propagation: str | None = None) -> bool:
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        if propagation:
            body["propagationPolicy"] = propagation
        status, _ = self.request("DELETE", object_path(api_version, kind, namespace, name), body)
        return status != 404
