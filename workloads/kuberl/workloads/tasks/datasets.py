"""Prompt datasets: builtin generated problems and JSONL files, and curriculum filters.

A JSONL row's prompt (``promptField``) is plain text, or chat turns — a list of
``{"role", "content"}`` — that the tokenizer renders with the model's chat template
(`policy.tokenizer.Tokenizer.encode_prompt`). Files come from `tasks.dataset_files`.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

from kuberl.workloads.spec import Dataset
from kuberl.workloads.tasks.dataset_files import dataset_file


@dataclass(frozen=True)
class Problem:
    """One prompt of a dataset with the answer its verifier checks."""

    prompt_id: str
    prompt: str  # the text, or the last turn of a chat prompt (for logs)
    answer: str
    difficulty: float
    dataset: str
    messages: tuple[dict, ...] | None = None  # a chat prompt's turns

    def to_data(self) -> dict:
        data = {"prompt": self.prompt, "answer": self.answer, "difficulty": self.difficulty, "dataset": self.dataset}
        return data | ({"messages": [dict(m) for m in self.messages]} if self.messages is not None else {})


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


def load_dataset(spec: Dataset, *, s3_client=None) -> list[Problem]:
    """The problems of one dataset entry: builtin:// generators (``?digits=&ops=&split=``) or a
    JSONL file from file://, s3:// or hf:// (`tasks.dataset_files`)."""
    url = urlparse(spec.source)
    if url.scheme == "builtin":
        if url.netloc != "arithmetic":
            raise ValueError(f"unknown builtin dataset {spec.source!r}; builtin://arithmetic is the one there is")
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        # Ids name the generator, not the entry, so the train and test entries of one generator stay disjoint.
        problems = split_problems(arithmetic_problems("arithmetic", digits=int(q.get("digits", 1)),
                                                      ops=q.get("ops", "+")), q.get("split"))
        problems = [Problem(p.prompt_id, p.prompt, p.answer, p.difficulty, spec.name) for p in problems]
    else:
        path = dataset_file(spec.name, spec.source, s3_client=s3_client)
        problems = [_row_problem(spec, i, json.loads(line)) for i,
                    line in enumerate(path.read_text().splitlines()) if line.strip()]
    return problems[: spec.max_prompts] if spec.max_prompts else problems


def _row_problem(spec: Dataset, i: int, row: dict) -> Problem:
    where = f"dataset {spec.name} row {i + 1}"
    for field in (spec.prompt_field, spec.answer_field):
        if field not in row:
            raise ValueError(f"{where}: no field {field!r} (set promptField/answerField to the row's field names)")
    prompt = row[spec.prompt_field]
    diff = float(row[spec.difficulty_field]) if spec.difficulty_field else 0.0
    if isinstance(prompt, list):
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"),
                                                                                         str) for m in prompt):
            raise ValueError(f"{where}: a chat prompt is a list of {{\"role\": str, \"content\": str}} turns")
        return Problem(f"{spec.name}-{i}", prompt[-1]["content"] if prompt else "", str(row[spec.answer_field]), diff,
                       spec.name,
                       messages=tuple(dict(m) for m in prompt))
    return Problem(f"{spec.name}-{i}", str(prompt), str(row[spec.answer_field]), diff, spec.name)


def filter_problems(problems: list[Problem], datasets: list[str] | None, lo: float | None,
                    hi: float | None) -> list[Problem]:
    """The problems a curriculum stage draws from."""
    return [
        p
        for p in problems
        if (not datasets or p.dataset in datasets)
        and (lo is None or p.difficulty >= lo)
        and (hi is None or p.difficulty <= hi)
    ]
