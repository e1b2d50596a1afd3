"""Problems, verifiers and the calculator-tool episode: the pure parts of the reference tasks.

`builtin://arithmetic` generates addition problems ("37+5=" → "42"). Query parameters
choose the range: ``digits`` (operands have at most this many digits, default 1),
``ops`` (operators drawn from, default ``+``). Each problem's difficulty is the digit
count of the longest number in it (operands and answer: 3+4 is 1, 7+8 is 2), so a
curriculum can filter on it (difficultyField is implied).

The calculator-tool task is multi-turn: a response ``c:<expr>`` is a tool call answered by
the environment with ``=<value>``; any other response is the final answer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from kuberl.workloads.jobspec import Dataset

TOOL_PREFIX = "c:"
MAX_TOOL_TURNS = 3


@dataclass(frozen=True)
class Problem:
    """One prompt of a dataset with the answer its verifier checks."""

    prompt_id: str
    prompt: str
    answer: str
    difficulty: float
    dataset: str

    def to_data(self) -> dict:
        return {"prompt": self.prompt, "answer": self.answer, "difficulty": self.difficulty, "dataset": self.dataset}


def _apply(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def arithmetic_problems(dataset: str = "arithmetic", digits: int = 1, ops: str = "+") -> list[Problem]:
    """Every ``a<op>b`` with operands below 10**digits, in a fixed shuffled order."""
    top = 10**digits
    problems = []
    for a, b, op in itertools.product(range(top), range(top), ops):
        answer = str(_apply(a, op, b))
        difficulty = max(len(str(a)), len(str(b)), len(answer.lstrip("-")))
        problems.append(Problem(f"{dataset}-{a}{op}{b}", f"{a}{op}{b}=", answer, float(difficulty), dataset))
    random.Random(f"{dataset}/{digits}/{ops}").shuffle(problems)
    return problems


def load_dataset(spec: Dataset) -> list[Problem]:
    """The problems of one dataset entry: builtin:// generators or a local JSONL file."""
    url = urlparse(spec.source)
    if url.scheme == "builtin":
        if url.netloc != "arithmetic":
            raise ValueError(f"unknown builtin dataset {spec.source!r}; builtin://arithmetic is the one there is")
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        problems = arithmetic_problems(spec.name, digits=int(q.get("digits", 1)), ops=q.get("ops", "+"))
    elif url.scheme in ("file", ""):
        problems = []
        for i, line in enumerate(Path(url.path).read_text().splitlines()):
            if not line.strip():
                continue
            row = json.loads(line)
            diff = float(row[spec.difficulty_field]) if spec.difficulty_field else 0.0
            problems.append(Problem(f"{spec.name}-{i}", str(row[spec.prompt_field]), str(row[spec.answer_field]), diff, spec.name))
    else:
        raise ValueError(f"dataset {spec.name}: source {spec.source!r} is not readable by local processes (builtin:// or file://)")
    return problems[: spec.max_prompts] if spec.max_prompts else problems


def filter_problems(problems: list[Problem], datasets: list[str] | None, lo: float | None, hi: float | None) -> list[Problem]:
    """The problems a curriculum stage draws from."""
    return [
        p for p in problems
        if (not datasets or p.dataset in datasets) and (lo is None or p.difficulty >= lo) and (hi is None or p.difficulty <= hi)
    ]


# ---------------------------------------------------------------------------------------
# Verifiers


def arithmetic_reward(response: str, answer: str) -> float:
    """1 when the response is exactly the number (surrounding spaces allowed), else 0."""
    return 1.0 if response.strip() == answer.strip() else 0.0


_BOXED = re.compile(r"\\boxed\{([^}]*)\}")


def verifier_reward(name: str, response: str, answer: str) -> float:
    if name == "arithmetic":
        return arithmetic_reward(response, answer)
    if name == "math-boxed":
        found = _BOXED.findall(response)
        return 1.0 if found and found[-1].strip() == answer.strip() else 0.0
    if name == "exact-match":
        return 1.0 if response == answer else 0.0
    raise ValueError(f"unknown verifier {name!r}")


# ---------------------------------------------------------------------------------------
# Calculator tool


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


def stable_id(*parts: str) -> str:
    return hashlib.sha1("/".join(parts).encode()).hexdigest()[:16]
