"""The calculator tool of the multi-turn calculator-tool task."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kuberl.workloads.tasks.datasets import _apply
from kuberl.workloads.tasks.verifiers import arithmetic_reward

TOOL_PREFIX = "c:"
MAX_TOOL_TURNS = 3
_EXPR = re.compile(r"^\s*(-?\d+)\s*([-+*])\s*(-?\d+)\s*$")


def calculate(expr: str) -> str:
    """The tool: one binary integer operation; anything else is an error string."""
    m = _EXPR.match(expr)
    if not m:
        return "error"
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    if abs(a) > 10**9 or abs(b) > 10**9:
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
