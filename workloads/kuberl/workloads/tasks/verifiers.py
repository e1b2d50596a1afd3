"""Built-in verifiers that score a response against the reference answer."""

from __future__ import annotations

import re


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
