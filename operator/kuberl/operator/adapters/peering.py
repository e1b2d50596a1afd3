"""kopf peering for running several operator replicas safely.

kopf's peering is a priority election: every replica writes a keep-alive with its
priority into a (Cluster)KopfPeering object; replicas that see a live peer with a higher
priority pause all handling, and take over when its keep-alive expires. Giving each
replica a distinct priority (random unless set) therefore yields one active leader and
warm standbys. kopf needs the peering CRDs and the peering object to exist: the CRDs come
from here (`kuberl operator --print-peering-crds`, also used by the chart) and the
operator creates the object itself at start.
"""

from __future__ import annotations

from typing import Any

PEERING_GROUP = "kopf.dev"


def _crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{PEERING_GROUP}", "labels": {"app.kubernetes.io/part-of": "kuberl"}},
        "spec": {
            "group": PEERING_GROUP,
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [{
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        # status: operator identity -> {priority, lastseen, lifetime}, written by kopf.
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    },
                }},
            }],
        },
    }


def peering_crds() -> list[dict[str, Any]]:
    return [
        _crd("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
        _crd("KopfPeering", "kopfpeerings", "Namespaced"),
    ]


def ensure_peering_object(kube, name: str, namespace: str | None) -> None:
    """Create the peering object kopf writes keep-alives into, if it is missing."""
    if namespace:
        path = f"/apis/{PEERING_GROUP}/v1/namespaces/{namespace}/kopfpeerings"
        body = {"apiVersion": f"{PEERING_GROUP}/v1", "kind": "KopfPeering",
                "metadata": {"name": name, "namespace": namespace}}
    else:
        path = f"/apis/{PEERING_GROUP}/v1/clusterkopfpeerings"
        body = {"apiVersion": f"{PEERING_GROUP}/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    kube.request("POST", path, body)  # 409 (exists) is fine
