"""Prompt datasets: builtin generated problems and JSONL files, and curriculum filters."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from kuberl.workloads.spec import Dataset


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
