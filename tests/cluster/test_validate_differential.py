"""`kuberl validate` against the API server, on manifests generated to break it.

Every case starts from a document in examples/ and applies one to three mutations drawn by
hypothesis: a value of the wrong type or out of range at any path, a field the schema does
not declare at any level, a required field deleted, a field the example leaves out set to an
edge value its schema allows or refuses (enum members, bounds and one past them, oversize
strings: the CEL rules see these), names of every shape. The local verdict
(`schema.validation.validation_errors`) must equal the API server's (a server-side dry run
with fieldValidation=Strict, as kubectl sends), and a refusal must name, locally, a field
the server's message names too.

CI runs a few hundred cases (derandomised: the same ones every run);
`KUBERL_DIFFERENTIAL_EXAMPLES=5000` runs more, and `KUBERL_DIFFERENTIAL_LOG=file` writes
every disagreement there instead of stopping at the first. A disagreement found becomes a
case in REGRESSIONS below.
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kuberl.operator.api import API_VERSION
from kuberl.operator.schema.validation import _schemas, validation_errors
from tests.support.fixtures_cluster import EXAMPLES_DIR, Kube, wait_until

pytestmark = pytest.mark.cluster

EXAMPLES = [doc for path in sorted(EXAMPLES_DIR.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
            if isinstance(doc, dict) and doc.get("apiVersion") == API_VERSION]
CASES = int(os.environ.get("KUBERL_DIFFERENTIAL_EXAMPLES", "300"))
LOG = os.environ.get("KUBERL_DIFFERENTIAL_LOG")  # collect disagreements there instead of failing at the first

JUNK = [None, True, False, -1, 0, 1, 3, 2**31, 2**53, -(2**40), 0.5, -0.5, 1e300, "", "x", "a" * 254, "Bad_Name",
        "1", "s3://b/k", [], [1], ["x"], {}, {"x": 1}]


def _walk(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into ``node`` (dict keys and list indexes), parents before children."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out += _walk(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*prefix, i))
            out += _walk(v, (*prefix, i))
    return out


def _schema_leaves(schema: dict, prefix: tuple = ()) -> list[tuple[tuple, dict]]:
    """(path, schema) of every scalar field the CRD declares under spec (no list items)."""
    out = []
    for name, prop in (schema.get("properties") or {}).items():
        path = (*prefix, name)
        if prop.get("type") == "object" and prop.get("properties"):
            out += _schema_leaves(prop, path)
        elif prop.get("type") in ("string", "integer", "number", "boolean"):
            out.append((path, prop))
    return out


LEAVES = {kind: _schema_leaves(schema["properties"]["spec"], ("spec",)) for kind, schema in _schemas().items()}


def _edge_values(prop: dict) -> list:
    kind = prop.get("type")
    if "enum" in prop:
        return [*prop["enum"], "not-a-member"]
    if kind in ("integer", "number"):
        values = [0, 1, -1]
        for bound in ("minimum", "maximum"):
            if bound in prop:
                b = prop[bound]
                step = 1 if kind == "integer" else 0.5
                values += [b, b - step if bound == "minimum" else b + step]
        return values if kind == "number" else [int(v) for v in values]
    if kind == "string":
        limit = prop.get("maxLength", 300)
        return ["", "a", "x" * limit, "x" * (limit + 1), "s3://bucket/key", "builtin://tiny", "hf://org/model"]
    return [True, False]


def _set(doc: dict, path: tuple, value: Any) -> None:
    node = doc
    for key in path[:-1]:
        if isinstance(node, list):
            node = node[key]
        else:
            if not isinstance(node.get(key), (dict, list)):
                node[key] = {}
            node = node[key]
    if isinstance(node, list):
        node[path[-1]] = value
    else:
        node[path[-1]] = value


def _delete(doc: dict, path: tuple) -> None:
    node = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]


@st.composite
def mutated(draw) -> dict:
    doc = copy.deepcopy(draw(st.sampled_from(EXAMPLES)))
    doc["metadata"] = {"name": "differential"}
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["junk", "junk", "unknown", "delete", "edge", "edge", "edge", "name"]))
        paths = [p for p in _walk(doc) if p[0] in ("spec", "metadata")]
        if what == "junk" and paths:
            _set(doc, draw(st.sampled_from(paths)), copy.deepcopy(draw(st.sampled_from(JUNK))))
        elif what == "unknown":
            parents = [()] + [p for p in paths if isinstance(_get(doc, p), dict)]
            parent = draw(st.sampled_from(parents))
            _set(doc, (*parent, draw(st.sampled_from(["foo", "Replicas", "extra", "spec"]))), 1)
        elif what == "delete" and paths:
            _delete(doc, draw(st.sampled_from(paths)))
        elif what == "edge":
            path, prop = draw(st.sampled_from(LEAVES[doc["kind"]]))
            if all(isinstance(_get(doc, path[:i]), dict) or _get(doc, path[:i]) is None for i in range(1, len(path))):
                _set(doc, path, draw(st.sampled_from(_edge_values(prop))))
        elif what == "name":
            if not isinstance(doc.get("metadata"), dict):
                doc["metadata"] = {}
            doc["metadata"]["name"] = draw(st.text(alphabet="abz09-.X_", min_size=0, max_size=70))
    return doc


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        try:
            doc = doc[key]
        except (KeyError, IndexError, TypeError):
            return None
    return doc


@pytest.fixture(scope="module")
def dry_run(kube: Kube):
    """POST as a server-side dry run into a namespace of this module's own."""
    ns = f"t-diff-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace({"metadata": {"name": ns, "labels": {"kuberl.io/test": "true"}}})
    wait_until(f"namespace {ns}", lambda: kube.core.read_namespace(ns), timeout=30)
    plurals = {c["spec"]["names"]["kind"]: c["spec"]["names"]["plural"]
               for path in sorted((Path(__file__).resolve().parents[2] / "crds").glob("*.yaml"))
               for c in yaml.safe_load_all(path.read_text())}

    def post(doc: dict) -> tuple[int, str]:
        path = f"/apis/{API_VERSION}/namespaces/{ns}/{plurals[doc['kind']]}"
        status, body = kube.request("POST", path, doc, query={"dryRun": "All", "fieldValidation": "Strict"})
        return status, body.get("message", "") if status >= 300 else ""

    yield post
    kube.core.delete_namespace(ns)


def _as_local_paths(message: str) -> str:
    """The server's message with fields spelled as kuberl validate spells them: decoding names
    metadata by its Go type, and a rule on the whole object has the path <nil>."""
    return message.replace("v1.ObjectMeta", "metadata").replace("ObjectMeta.", "metadata.").replace("<nil>", "<root>")


def disagreement(doc: dict, post) -> str | None:
    """How kuberl validate and the API server disagree on ``doc``, or None."""
    local = validation_errors(json.loads(json.dumps(doc)))
    status, message = post(doc)
    server_accepts = status in (200, 201)
    if server_accepts == bool(local):
        return (f"the API server {'accepted' if server_accepts else f'refused ({status})'} what kuberl validate "
                f"{'refused' if local else 'accepted'}:\nlocal: {[str(e) for e in local]}\nserver: {message[:2000]}")
    if local and not [e for e in local if e.path in _as_local_paths(message)]:
        said = [str(e) for e in local]
        return f"no field kuberl validate names is in the server's message:\nlocal: {said}\nserver: {message[:2000]}"
    return None


def compare(doc: dict, post) -> None:
    found = disagreement(doc, post)
    if found and LOG:  # the long run: collect every disagreement, fail at none
        with open(LOG, "a") as f:
            f.write(json.dumps({"disagreement": found, "doc": doc}) + "\n")
        return
    assert found is None, f"{found}\n{json.dumps(doc)[:2000]}"


def _regression(example_kind: str, **changes: Any) -> dict:
    doc = copy.deepcopy(next(d for d in EXAMPLES if d["kind"] == example_kind))
    doc["metadata"] = {"name": "differential"}
    for dotted, value in changes.items():
        _set(doc, tuple(dotted.split("__")), value)
    return doc


# Disagreements the generator found (2026-12-05, before kuberl validate checked metadata,
# top-level fields and nulls), kept so they never come back.
REGRESSIONS: dict[str, dict] = {
    "metadata-null": _regression("AgentEnv", metadata=None),  # crashed kuberl validate
    "metadata-a-number": _regression("RLJob", metadata=3),  # crashed kuberl validate
    "name-not-a-subdomain": _regression("RolloutPool", metadata={"name": "-X"}),
    "name-empty": _regression("RLJob", metadata={"name": ""}),
    "generate-name-only": _regression("AgentEnv", metadata={"generateName": "calc-"}),  # the server accepts it
    "unknown-top-level-field": _regression("AgentEnv", foo=1),
    "unknown-metadata-field": _regression("RLJob", metadata={"name": "differential", "extra": 1}),
    "null-field-is-left-out": _regression("RLJob", spec__model__dtype=None),  # the server prunes it, then defaults
    "label-value-too-long": _regression("RLJob", metadata={"name": "differential", "labels": {"team": "x" * 64}}),
    "cel-rule-on-a-missing-key": _regression("RLJob", spec__reward={"type": "agentEnv"}),  # crashed kuberl validate
    "annotations-over-256-KiB": _regression("RLJob",
                                            metadata={"name": "differential", "annotations": {"note": "x" * 262200}}),
}


@pytest.mark.parametrize("case", list(REGRESSIONS), ids=list(REGRESSIONS))
def test_known_disagreements_stay_fixed(case, dry_run):
    compare(REGRESSIONS[case], dry_run)


def test_every_example_is_valid_locally_and_at_the_server(dry_run):
    for doc in EXAMPLES:
        compare({**copy.deepcopy(doc), "metadata": {"name": "differential"}}, dry_run)


@settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=mutated())
def test_kuberl_validate_agrees_with_the_api_server(doc, dry_run):
    compare(doc, dry_run)
