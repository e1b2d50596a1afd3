"""The API server, not our Python code, enforces the CRDs: schema, defaults, CEL rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.fixtures_cluster import CRDS_DIR, EXAMPLES_DIR, Kube, yaml_documents
from tests.support.malformed_cases import MALFORMED_CASES

pytestmark = pytest.mark.cluster

CRD_FILES = sorted(CRDS_DIR.glob("*.yaml"))
EXAMPLE_FILES = sorted(EXAMPLES_DIR.glob("*.yaml"))


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_crd_files_exist():
    # Guards the parametrised tests below against silently collecting nothing.
    assert CRD_FILES, "crds/ is empty"
    assert EXAMPLE_FILES, "examples/ is empty"


@pytest.mark.parametrize("path", CRD_FILES, ids=_ids(CRD_FILES))
def test_crd_installs_and_is_established(kube: Kube, path: Path):
    out = kube.kubectl("apply", "--server-side", "--force-conflicts",
                       "--field-manager=kuberl-tests", "-f", str(path), "-o", "json")
    applied = json.loads(out.stdout)
    items = applied.get("items", [applied])
    assert items and all(i["kind"] == "CustomResourceDefinition" for i in items)
    for crd in items:
        name = crd["metadata"]["name"]
        kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
        live = kube.get_json(f"crd/{name}")
        conds = {c["type"]: c["status"] for c in live["status"]["conditions"]}
        # NamesAccepted=False would mean a plural/short name clashes with another CRD.
        assert conds.get("NamesAccepted") == "True", conds
        assert not [c for c in live["status"]["conditions"] if c["type"] == "NonStructuralSchema"]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=_ids(EXAMPLE_FILES))
def test_example_applies_server_side(kube: Kube, namespace: str, path: Path):
    out = kube.kubectl("apply", "--server-side", "--field-manager=kuberl-tests",
                       "-n", namespace, "-f", str(path), "-o", "json")
    applied = json.loads(out.stdout)
    items = applied.get("items", [applied])
    assert len(items) == len(yaml_documents(path))
    for obj in items:
        # Round trip through the server: the object is stored and readable back.
        kube.get_json("-n", namespace, f"{obj['kind'].lower()}.{obj['apiVersion'].split('/')[0]}",
                      obj["metadata"]["name"])


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in MALFORMED_CASES])
def test_malformed_manifest_rejected_by_api_server(kube: Kube, namespace: str, case):
    manifest = json.loads(json.dumps(case.manifest))  # never mutate the shared table
    manifest.setdefault("metadata", {}).setdefault("name", f"bad-{abs(hash(case.id)) % 10**8}")
    api = kube.dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
    # fieldValidation=Strict is what kubectl create/apply send by default; without it the
    # server would drop unknown fields with a warning instead of rejecting them.
    status, body = kube.request("POST", api.path(namespace=namespace if api.namespaced else None),
                                manifest, query={"fieldValidation": "Strict"})
    message = body.get("message", "")
    assert status in (400, 422), f"accepted ({status}) instead of rejected: {case.id}"
    assert case.expect in message, f"expected {case.expect!r} in the API server's message:\n{message}"
    if getattr(case, "message", None):  # the CEL rule's human text, where a CEL rule rejects it
        assert case.message in message, f"expected {case.message!r} in the API server's message:\n{message}"
