"""The calculator tool of the multi-turn calculator-tool task."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kuberl.workloads.tasks.datasets import _apply
from kuberl.workloads.tasks.verifiers import arithmetic_reward

TOOL_PREFIX = "c:"
MAX_TOOL_TURNS = 3
MAX_OPERAND = 10**9
_EXPR = re.compile(r"^\s*(-?\d+)\s*([-+*])\s*(-?\d+)\s*$")


def _operand(digits: str) -> int | None:
    # Counted before int(): a policy's 5000-digit operand is its mistake ("error"), and int()
    # of it would raise (Python's 4300-digit limit) or take quadratic time.
    if len(digits.lstrip("-").lstrip("0")) > len(str(MAX_OPERAND)):
        return None
    value = int(digits)
    return value if abs(value) <= MAX_OPERAND else None


def calculate(expr: str) -> str:
    """The tool: one binary integer operation; anything else is an error string."""
    m = _EXPR.match(expr)
    if not m:
        return "error"
    a, op, b = _operand(m.group(1)), m.group(2), _operand(m.group(3))
    if a is None or b is None:
        return "error"
    return str(_apply(a, op, b))


@dataclass(frozen=True)
class StepResult:
    """What the environment answers to one action."""

    observation: str
    reward: float
    done: bool


def calculator_step(action: str, answer: str, turn: int) -> StepResult:
    """A tool call gets ``=<value>``; a final answer is scored; too many calls end the episode at 0."""
    if action.startswith(TOOL_PREFIX):
        if turn + 1 >= MAX_TOOL_TURNS:
            return StepResult("", 0.0, True)
        return StepResult(f"={calculate(action[len(TOOL_PREFIX):])}\n", 0.0, False)
    return StepResult("", arithmetic_reward(action, answer), True)
