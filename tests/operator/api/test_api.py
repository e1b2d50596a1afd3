"""The API models, the generated CRDs and docs, the examples, and the malformed-manifest table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kuberl.operator.api import RESOURCES, AgentEnv, RLJob, RolloutPool
from kuberl.operator.cli.crds import generated_files
from kuberl.operator.schema.crdgen import all_crds
from kuberl.operator.schema.validation import (
    ManifestInvalid,
    apply_defaults,
    validate,
    validation_errors,
)
from tests.support.malformed_cases import MALFORMED_CASES

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_DOCS = [
    (path.name,
     doc) for path in sorted((ROOT / "examples").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc
]
MODELS = {"RLJob": RLJob, "RolloutPool": RolloutPool, "AgentEnv": AgentEnv}


def test_generated_files_are_fresh():
    for rel, text in generated_files().items():
        on_disk = (ROOT / rel).read_text()
        assert on_disk == text, f"{rel} is stale: run `kuberl crds` and commit"


def test_three_crds_with_status_scale_columns_and_category():
    crds = {c["spec"]["names"]["kind"]: c for c in all_crds().values()}
    assert set(crds) == {"RLJob", "RolloutPool", "AgentEnv"}
    assert len(list((ROOT / "crds").glob("*.yaml"))) == 3
    for kind, crd in crds.items():
        version = crd["spec"]["versions"][0]
        assert "status" in version["subresources"]
        assert crd["spec"]["names"]["categories"] == ["kuberl"]
        assert crd["spec"]["names"]["shortNames"]
        assert any(col["jsonPath"] == ".metadata.creationTimestamp" for col in version["additionalPrinterColumns"])
    scale = crds["RolloutPool"]["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                     "labelSelectorPath": ".status.selector"}
    columns = {c["name"] for c in crds["RLJob"]["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Phase", "Step", "Reward", "Policy", "Rollout", "Age"} <= columns


def _walk(schema, path=""):
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from _walk(prop, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("crd", list(all_crds().values()), ids=lambda c: c["spec"]["names"]["kind"])
def test_schema_is_structural_and_documented(crd):
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = json.dumps(schema)
    assert "$ref" not in text and '"null"' not in text and '"title"' not in text
    for path, node in _walk(schema):
        if node.get("x-kubernetes-int-or-string"):
            continue
        assert "type" in node, f"{path} has no type (not structural)"
        # .metadata may carry nothing but `type: object` (the API server refuses more);
        # kubectl explain documents it from ObjectMeta.
        if path.count(".") >= 1 and not path.endswith("[]") and not path.endswith("{}") and path != ".metadata":
            assert node.get("description"), f"{path} has no description for kubectl explain"


@pytest.mark.parametrize("name,doc", EXAMPLE_DOCS, ids=[f"{n}:{d['kind']}" for n, d in EXAMPLE_DOCS])
def test_examples_are_valid_and_parse(name, doc):
    assert validation_errors(doc) == []
    defaulted = validate(doc)
    model = MODELS[doc["kind"]].model_validate(defaulted)
    assert model.metadata["name"] == doc["metadata"]["name"]


def test_examples_cover_the_advertised_jobs():
    kinds = [(n, d["kind"], d["spec"].get("mode")) for n, d in EXAMPLE_DOCS]
    assert ("colocated-math.yaml", "RLJob", "colocated") in kinds
    assert ("decoupled-agentic.yaml", "RLJob", "decoupled") in kinds
    assert any(k == "RolloutPool" for _, k, _ in kinds)
    assert any(k == "AgentEnv" for _, k, _ in kinds)
    tiny = dict(EXAMPLE_DOCS)["tiny-cpu.yaml"]
    assert tiny["spec"]["trainer"]["gpusPerReplica"] == 0


def test_defaults_match_the_models():
    """The API server's defaults (from the schema) equal pydantic's: one source of truth."""
    doc = dict(EXAMPLE_DOCS)["tiny-cpu.yaml"]
    minimal = {"apiVersion": doc["apiVersion"], "kind": "RLJob", "metadata": {"name": "m"},
               "spec": {"model": doc["spec"]["model"], "datasets": doc["spec"]["datasets"],
                        "weightStore": {"bucket": "bkt"},
                        "reward": {"verifier": {"name": "arithmetic"}}}}
    defaulted = validate(minimal)
    assert defaulted["spec"]["algorithm"]["groupSize"] == 8
    assert defaulted["spec"]["algorithm"]["offPolicyCorrection"] == {
        "method": "truncate", "low": 0.0, "high": 2.0, "staleness": {"policy": "drop", "decay": 0.5, "minWeight": 0.05}}
    assert defaulted["spec"]["mode"] == "decoupled"
    from_model = RLJob.model_validate(minimal).to_wire()["spec"]
    for section in ("algorithm", "trainer", "buffer", "runPolicy", "checkpoint"):
        assert defaulted["spec"][section] == from_model[section], section


def test_malformed_table_is_big_enough_and_distinct():
    assert len(MALFORMED_CASES) >= 30
    assert len({c.id for c in MALFORMED_CASES}) == len(MALFORMED_CASES)
    assert sum(1 for c in MALFORMED_CASES if c.message) >= 10, "contradictory-field (CEL) cases"


@pytest.mark.parametrize("case", MALFORMED_CASES, ids=lambda c: c.id)
def test_malformed_manifest_is_rejected_naming_the_field(case):
    errors = validation_errors(case.manifest)
    text = "\n".join(str(e) for e in errors)
    assert errors, f"{case.id} was accepted"
    assert case.expect in text, text
    if case.message:
        assert case.message in text, text
    with pytest.raises(ManifestInvalid, match=case.expect.replace("[", r"\[").replace("]", r"\]")):
        validate(case.manifest)


def test_validate_cli_reports_field(tmp_path):
    bad = MALFORMED_CASES[0]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad.manifest))
    out = subprocess.run([sys.executable, "-m", "kuberl.operator.cli", "validate", str(path)], capture_output=True,
                         text=True)
    assert out.returncode == 1
    assert bad.expect in out.stderr
    ok = subprocess.run([sys.executable, "-m", "kuberl.operator.cli", "validate",
                         str(ROOT / "examples" / "tiny-cpu.yaml")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_apply_defaults_fills_nested_objects_from_empty_parent():
    schema = all_crds()["kuberl.io_rolloutpools.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    out = apply_defaults({"spec": {}}, schema)
    assert out["spec"]["autoscaling"]["maxScaleDownPercent"] == 25
    assert out["spec"]["engine"]["type"] == "sglang"


def test_every_kind_round_trips_through_its_model():
    for model in RESOURCES:
        assert model.kind_info["plural"].endswith("s")
