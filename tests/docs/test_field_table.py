"""docs/fields.md: one row per leaf field of the three CRDs' spec, and every row checkable.

The table says, for each field a user can set, whether it changes anything, which code reads
it and which test shows it. This test derives the field list from crds/*.yaml, so a field
added to (or removed from) the API without a row fails here, and checks that every reader
named is importable and every test named exists. Pure: yaml and importlib.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "fields.md"
CRDS = sorted((ROOT / "crds").glob("kuberl.io_*.yaml"))
HEADER = ["field", "effect", "read by", "shown by"]

# Readers being written right now; each must be importable once it lands (then drop it here).
PENDING_READERS: set[str] = set()

# Subtrees of the RLJob spec that are another kind's whole spec: one row each, pointing there.
EMBEDDED = {
    "RLJob spec.rollout.template": "RolloutPool",
    "RLJob spec.agentEnvs[].spec": "AgentEnv",
}

# `effect` rows whose effect no test observes yet. Add a test, then remove the field here:
# a field listed here that names a test, or that is not an `effect` row, fails the check.
EFFECT_WITHOUT_TEST = frozenset({
    "RLJob spec.model.warmupSftSteps",
    "RLJob spec.datasets[].name",
    "RLJob spec.datasets[].answerField",
    "RLJob spec.datasets[].difficultyField",
    "RLJob spec.datasets[].maxPrompts",
    "RLJob spec.evaluation.datasets[].promptField",
    "RLJob spec.evaluation.datasets[].answerField",
    "RLJob spec.evaluation.datasets[].difficultyField",
    "RLJob spec.evaluation.datasets[].maxPrompts",
    "RLJob spec.curriculum.stages[].datasets",
    "RLJob spec.curriculum.stages[].difficulty.min",
    "RLJob spec.reward.type",
    "RLJob spec.reward.verifier.name",
    "RLJob spec.reward.agentEnv",
    "RLJob spec.algorithm.entropyCoef",
    "RLJob spec.algorithm.learningRate",
    "RLJob spec.algorithm.weightDecay",
    "RLJob spec.algorithm.gradClip",
    "RLJob spec.algorithm.temperature",
    "RLJob spec.algorithm.dynamicSampling",
    "RLJob spec.algorithm.overSamplingFactor",
    "RLJob spec.trainer.image",
    "RLJob spec.trainer.resources.requests",
    "RLJob spec.trainer.resources.limits",
    "RLJob spec.trainer.env[].name",
    "RLJob spec.trainer.env[].value",
    "RLJob spec.trainer.placement.tolerations[].value",
    "RLJob spec.trainer.placement.tolerations[].tolerationSeconds",
    "RLJob spec.buffer.streamReplicas",
    "RLJob spec.weightStore.bucket",
    "RLJob spec.weightStore.prefix",
    "RLJob spec.weightStore.region",
    "RLJob spec.checkpoint.uri",
    "RLJob spec.checkpoint.keep",
    "RolloutPool spec.engine.args",
    "RolloutPool spec.engine.maxRunningRequests",
    "RolloutPool spec.agent.image",
    "RolloutPool spec.agent.concurrency",
    "RolloutPool spec.agent.weightSwap",
    "RolloutPool spec.agent.env[].name",
    "RolloutPool spec.agent.env[].value",
    "RolloutPool spec.resources.requests",
    "RolloutPool spec.resources.limits",
    "RolloutPool spec.autoscaling.intervalSeconds",
    "RolloutPool spec.placement.tolerations[].value",
    "RolloutPool spec.placement.tolerations[].tolerationSeconds",
    "RolloutPool spec.placement.affinity",
    "RolloutPool spec.placement.priorityClassName",
    "AgentEnv spec.image",
    "AgentEnv spec.command",
    "AgentEnv spec.args",
    "AgentEnv spec.env[].name",
    "AgentEnv spec.env[].value",
    "AgentEnv spec.port",
    "AgentEnv spec.resources.requests",
    "AgentEnv spec.resources.limits",
    "AgentEnv spec.placement.nodeSelector",
    "AgentEnv spec.placement.tolerations[].key",
    "AgentEnv spec.placement.tolerations[].operator",
    "AgentEnv spec.placement.tolerations[].value",
    "AgentEnv spec.placement.tolerations[].effect",
    "AgentEnv spec.placement.tolerations[].tolerationSeconds",
    "AgentEnv spec.placement.affinity",
    "AgentEnv spec.placement.priorityClassName",
})

NODE_ID = re.compile(r"^(?P<path>(tests|e2e)/[\w/]+\.py)::(?P<name>test_\w+)(\[.*\])?$")
ISSUE = re.compile(r"\bissue \d+\b|\bno issue filed\b")


def _leaves(node: dict, path: str, out: list[str], kind: str) -> None:
    """Leaf paths under ``node``: recurse into object properties and into the properties
    of list items; everything else (scalars, lists of scalars, free-form objects) is a leaf."""
    if f"{kind} {path}" in EMBEDDED:
        out.append(path)
        return
    props = node.get("properties")
    if node.get("type") == "object" and props:
        for key, child in props.items():
            _leaves(child, f"{path}.{key}", out, kind)
        return
    item_props = (node.get("items") or {}).get("properties")
    if node.get("type") == "array" and item_props:
        for key, child in item_props.items():
            _leaves(child, f"{path}[].{key}", out, kind)
        return
    out.append(path)


def _spec_schema(crd: dict) -> dict:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _crds() -> dict[str, dict]:
    out = {}
    for path in CRDS:
        crd = yaml.safe_load(path.read_text())
        out[crd["spec"]["names"]["kind"]] = crd
    return out


def crd_fields() -> set[str]:
    fields = set()
    for kind, crd in _crds().items():
        paths: list[str] = []
        _leaves(_spec_schema(crd), "spec", paths, kind)
        fields |= {f"{kind} {p}" for p in paths}
    return fields


def table_rows() -> list[dict[str, str]]:
    """The rows of the markdown table that follows the header line, as dicts by column."""
    lines = TABLE.read_text().splitlines()
    cells = [[c.strip().replace("`", "") for c in line.strip().strip("|").split("|")] for line in lines]
    start = next((i for i, row in enumerate(cells) if row == HEADER), None)
    assert start is not None, f"{TABLE}: no table header | {' | '.join(HEADER)} |"
    rows = []
    for line, row in zip(lines[start + 2:], cells[start + 2:]):
        if not line.strip().startswith("|"):
            break
        assert len(row) == len(HEADER), f"{TABLE}: a row needs {len(HEADER)} cells: {line}"
        rows.append(dict(zip(HEADER, row)))
    return rows


def _listed(cell: str) -> list[str]:
    return [] if cell == "-" else [x.strip() for x in cell.split(",") if x.strip()]


ROWS = table_rows()


def test_every_spec_field_has_exactly_one_row():
    fields = crd_fields()
    seen = [r["field"] for r in ROWS]
    missing = sorted(fields - set(seen))
    extra = sorted(set(seen) - fields)
    twice = sorted({f for f in seen if seen.count(f) > 1})
    assert not (missing or extra or twice), (
        f"docs/fields.md is out of step with crds/: missing {missing} (add a row to docs/fields.md for each), "
        f"rows for fields that do not exist {extra}, rows given twice {twice}")


def test_embedded_specs_have_the_fields_of_their_kind():
    """`same as <Kind> spec` holds only while the embedded subtree has exactly that kind's fields."""
    crds = _crds()
    for where, kind in EMBEDDED.items():
        owner, path = where.split(" ", 1)
        node = _spec_schema(crds[owner])
        for part in path.split(".")[1:]:
            key = part.removesuffix("[]")
            node = node["properties"][key]
            if part.endswith("[]"):
                node = node["items"]
        inner: list[str] = []
        for key, child in node["properties"].items():
            _leaves(child, f"spec.{key}", inner, "")
        own: list[str] = []
        _leaves(_spec_schema(crds[kind]), "spec", own, kind)
        assert sorted(inner) == sorted(own), f"{where} no longer has the fields of {kind}'s spec"


def _cel_messages() -> list[str]:
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            found.extend(r.get("message", "") for r in node.get("x-kubernetes-validations", []))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(_crds())
    return found


@pytest.mark.parametrize("row", ROWS, ids=[r["field"] for r in ROWS])
def test_row_is_well_formed(row):
    field, effect = row["field"], row["effect"]
    readers, tests = _listed(row["read by"]), _listed(row["shown by"])
    if field in EMBEDDED:
        assert effect == f"same as {EMBEDDED[field]} spec", f"{field}: effect must be 'same as {EMBEDDED[field]} spec'"
    elif effect == "effect":
        assert readers, f"{field}: an effect row names the code that reads the field"
        if field in EFFECT_WITHOUT_TEST:
            assert not tests, f"{field} names a test now: remove it from EFFECT_WITHOUT_TEST"
        else:
            assert tests, f"{field}: name a test that shows its effect, or list it in EFFECT_WITHOUT_TEST"
    elif effect.startswith("partial: "):
        assert ISSUE.search(effect), (
            f"{field}: a partial row names the issue that completes it (or says 'no issue filed')"
        )
    elif effect.startswith("refused: "):
        # A field that does nothing yet is refused by the API server with a message saying so.
        said = effect[len("refused: "):].strip()
        assert said and any(said in m for m in _cel_messages()), f"{field}: no CEL rule of the CRDs says {said!r}"
    elif effect.startswith("none: "):
        pytest.fail(f"{field} has no effect: refuse it by validation (a 'refused: <the rule's message>' row) or remove "
                    f"it")
    else:
        pytest.fail(f"{field}: effect must be 'effect', 'partial: ...' or 'refused: ...', not {effect!r}")
    if effect != "effect":
        assert field not in EFFECT_WITHOUT_TEST, f"{field} is not an effect row: remove it from EFFECT_WITHOUT_TEST"
    for node in tests:
        m = NODE_ID.match(node)
        assert m, f"{field}: {node!r} is not a node id tests/<path>.py::test_<name>"
        path = ROOT / m["path"]
        assert path.is_file(), f"{field}: {m['path']} does not exist"
        assert re.search(rf"^\s*(async\s+)?def {m['name']}\(", path.read_text(),
                         re.M), f"{field}: no test {m['name']} in {m['path']}"


def test_effect_without_test_names_only_table_rows():
    unknown = sorted(EFFECT_WITHOUT_TEST - {r["field"] for r in ROWS})
    assert not unknown, f"EFFECT_WITHOUT_TEST names fields the table does not have: {unknown}"


def test_every_reader_is_importable():
    failures = []
    for reader in sorted({x for r in ROWS for x in _listed(r["read by"])}):
        if reader in PENDING_READERS:
            continue
        module, _, attr = reader.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            failures.append(f"{reader}: {type(e).__name__}: {e}")
            continue
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            failures.append(f"{reader}: not a module-level function or class")
    assert not failures, "readers named in docs/fields.md that cannot be imported:\n" + "\n".join(failures)
