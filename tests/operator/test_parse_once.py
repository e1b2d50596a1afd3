"""A spec is read through its API model, which holds the defaults, never as a dict with the
default restated beside the read (`spec.get("minReplicas", 1)`): a default changed in the
API would leave those copies behind. Checked in the controllers and decisions: any
``<…spec…>.get("<key>", <default>)``."""

from __future__ import annotations

import ast
from pathlib import Path

from kuberl.operator import controllers

OPERATOR = Path(controllers.__file__).resolve().parents[1]


def restated_defaults(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)
                and "spec" in ast.unparse(node.func.value).lower()):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_spec_default_is_restated_in_the_controllers_or_decisions():
    found = [f"{path.relative_to(OPERATOR)}:{line}" for layer in ("controllers", "decisions")
             for path in sorted((OPERATOR / layer).rglob("*.py")) for line in restated_defaults(path.read_text())]
    assert not found, "read the spec through its API model:\n" + "\n".join(found)


def test_the_check_sees_a_restated_default():
    assert restated_defaults('m = (pool.get("spec") or {}).get("minReplicas", 1)') == [
        "1: (pool.get('spec') or {}).get('minReplicas', 1)"]
    assert restated_defaults('r = status.get("readyReplicas", 0)') == []
