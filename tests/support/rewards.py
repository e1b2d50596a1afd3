"""Reward functions for the tests: `reward.python.entryPoint: tests.support.rewards:<name>`.

The rollout agent imports them in its reward child process (`kuberl run` starts every
process in the repository root, so `tests` is importable there).
"""

from __future__ import annotations

import os
import random
import time

from kuberl.workloads.tasks.verifiers import verifier_reward


def length(prompt: str, response: str, sample: dict) -> float:
    return float(len(response))


def raises(prompt: str, response: str, sample: dict) -> float:
    raise ValueError("this reward always raises")


def hangs(prompt: str, response: str, sample: dict) -> float:
    time.sleep(3600)
    return 1.0


def hangs_on_request(prompt: str, response: str, sample: dict) -> float:
    """Hangs when the response is "hang", else the response's length."""
    if response == "hang":
        time.sleep(3600)
    return float(len(response))


def exits(prompt: str, response: str, sample: dict) -> float:
    os._exit(3)


def not_a_number(prompt: str, response: str, sample: dict) -> float:
    return float("nan")


def noisy(prompt: str, response: str, sample: dict) -> float:
    print("a reward that prints to stdout must not corrupt its answer")
    return 0.5


def flaky_arithmetic(prompt: str, response: str, sample: dict) -> float:
    """The arithmetic verifier, except that 10 % of calls raise and 1 % hang."""
    draw = random.random()
    if draw < 0.01:
        time.sleep(3600)
    if draw < 0.11:
        raise RuntimeError("flaky reward: simulated failure")
    return verifier_reward("arithmetic", response, str(sample["answer"]))
