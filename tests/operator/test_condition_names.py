"""Condition types and reasons are spelled once, in `api/conditions.py`: the controllers,
decisions and `kuberl run` use its names, so a reason renamed there is renamed everywhere
(and `kubectl wait --for=condition=…` users read one list)."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

from kuberl.operator.api import RLJobStatus, conditions

OPERATOR = Path(conditions.__file__).resolve().parents[1]
# A job's phase (and a pod's, in the lifecycle) shares some of these words, Running or
# Failed: a phase is not a condition, and the API model's Literal spells the phases.
PHASES = set(typing.get_args(typing.get_args(RLJobStatus.model_fields["phase"].annotation)[0]))
WORDS = {v for k, v in vars(conditions).items() if k.isupper() and isinstance(v, str)} - PHASES


def test_no_condition_type_or_reason_is_spelled_outside_the_conditions_module():
    found = []
    for layer in ("controllers", "decisions", "local"):
        for path in sorted((OPERATOR / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in WORDS:
                    found.append(f"{path.relative_to(OPERATOR)}:{node.lineno}: {node.value!r}")
    assert not found, "use the names of kuberl.operator.api.conditions:\n" + "\n".join(found)


def test_the_check_sees_the_words_it_guards():
    assert PHASES == {"Pending", "Running", "Suspended", "Succeeded", "Failed"}
    assert {"Ready", "InvalidSpec", "ChildRejected", "NoEngineReady", "TrainerReady"} <= WORDS
