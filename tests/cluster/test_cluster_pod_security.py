"""The pods the operator builds are admitted by the API server's PodSecurity admission
in a namespace that enforces the restricted Pod Security Standard (issue 18).

Every Pod `render` builds from the examples, and a Pod made of every Deployment's pod
template (what its ReplicaSet would create), is created with dryRun=All: admission,
PodSecurity included, runs in full and nothing is stored. fieldValidation=Strict makes
any field the server does not know a refusal too.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from kuberl.operator.children.render import render
from kuberl.operator.schema.validation import validate
from kuberl.operator.settings import OperatorSettings
from tests.support.fixtures_cluster import EXAMPLES_DIR, Kube

pytestmark = pytest.mark.cluster

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


def _example_docs(credentials: bool) -> list[dict]:
    docs = [
        validate(d) for path in sorted(EXAMPLES_DIR.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d
    ]
    if credentials:  # set after validation: works whether or not the CRD's CEL still refuses it
        for d in docs:
            if d["kind"] == "RLJob":
                d["spec"].setdefault("buffer", {})["credentialsSecret"] = {"name": "nats-creds"}
                d["spec"].setdefault("weightStore", {})["credentialsSecret"] = {"name": "s3-creds"}
    return docs


def _pods(children: list[dict], namespace: str) -> list[dict]:
    pods = []
    for c in children:
        if c["kind"] == "Pod":
            pod = copy.deepcopy(c)
        elif c["kind"] == "Deployment":
            template = c["spec"]["template"]
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": f"{c['metadata']['name']}-from-template",
                                "labels": dict(template["metadata"]["labels"])},
                   "spec": copy.deepcopy(template["spec"])}
        else:
            continue
        pod["metadata"]["namespace"] = namespace
        pod["metadata"].pop("annotations", None)
        pods.append(pod)
    return pods


def _dry_run_create(kube: Kube, namespace: str, pod: dict) -> tuple[int, dict]:
    return kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod,
                        query={"dryRun": "All", "fieldValidation": "Strict"})


@pytest.fixture
def restricted_namespace(kube: Kube, namespace: str) -> str:
    kube.core.patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})
    return namespace


def test_the_namespace_really_refuses_a_pod_that_is_not_restricted(kube: Kube, restricted_namespace: str):
    # Without this the test below could pass against a server that enforces nothing.
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}
    status, body = _dry_run_create(kube, restricted_namespace, bare)
    assert status == 403 and "violates PodSecurity" in body.get("message", ""), (status, body)


@pytest.mark.parametrize("credentials", [False, True], ids=["plain", "credentials"])
def test_every_pod_built_from_the_examples_is_admitted_as_restricted(kube: Kube, restricted_namespace: str,
                                                                     credentials: bool):
    children = render(_example_docs(credentials), OperatorSettings(), namespace=restricted_namespace, check=False)
    pods = _pods(children, restricted_namespace)
    assert {p["metadata"]["name"].endswith("-from-template") for p in pods} == {True, False}  # Pods and templates
    refused = {}
    for pod in pods:
        status, body = _dry_run_create(kube, restricted_namespace, pod)
        if status not in (200, 201):
            refused[pod["metadata"]["name"]] = (status, body.get("message"))
    assert refused == {}
