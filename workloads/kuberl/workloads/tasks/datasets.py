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


HELD_OUT_EVERY = 5
"""builtin://arithmetic?split=test is every 5th problem of the fixed order (20 %), split=train the rest."""


def split_problems(problems: list[Problem], split: str | None) -> list[Problem]:
    """The train or test part of a builtin problem list (disjoint, stable across runs)."""
    if split is None:
        return problems
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: builtin datasets split into train and test")
    return [p for i, p in enumerate(problems) if (i % HELD_OUT_EVERY == 0) == (split == "test")]


def load_dataset(spec: Dataset) -> list[Problem]:
    """The problems of one dataset entry: builtin:// generators (``?digits=&ops=&split=``) or a local JSONL file."""
    url = urlparse(spec.source)
    if url.scheme == "builtin":
        if url.netloc != "arithmetic":
            raise ValueError(f"unknown builtin dataset {spec.source!r}; builtin://arithmetic is the one there is")
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        # Ids name the generator, not the entry, so the train and test entries of one generator stay disjoint.
        problems = split_problems(arithmetic_problems("arithmetic", digits=int(q.get("digits", 1)), ops=q.get("ops", "+")), q.get("split"))
        problems = [Problem(p.prompt_id, p.prompt, p.answer, p.difficulty, spec.name) for p in problems]
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
