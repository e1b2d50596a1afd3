"""The supervised warm start (``model.warmupSftSteps``): its batches, for any backend.

A short supervised phase on the dataset's prompts whose targets are the reference answer
**plus uniform integer noise in ±4** (9 equally likely numbers, one of them right). It
teaches the answer format (digits, then end-of-sequence) and the rough size of the answer,
but not the answer: the policy starts near 1/9 ≈ 0.11 mean reward, with enough entropy left
for RL to find the exact sums. (Targets that ignore the prompt entirely make the model
ignore its input, and RL then collapses onto the most frequent answer; exact targets would
leave nothing to learn.)
"""

from __future__ import annotations

import random

from kuberl.workloads.policy.backend import SupervisedBatch
from kuberl.workloads.policy.tokenizer import Tokenizer
from kuberl.workloads.rl.batch import pad_rows
from kuberl.workloads.tasks.datasets import Problem

WARMUP_NOISE = 4  # ± range of the target noise (see module docstring)
WARMUP_LR = 3e-3
WARMUP_BATCH = 64


def noisy_target(answer: str, rng: random.Random) -> str:
    """The warm-start target for one answer: numeric answers shifted by a uniform ±WARMUP_NOISE."""
    try:
        value = int(answer)
    except ValueError:
        return answer
    noisy = value + rng.randint(-WARMUP_NOISE, WARMUP_NOISE)
    return str(noisy if value < 0 else max(0, noisy))


def warmup_batches(problems: list[Problem], tokenizer: Tokenizer, steps: int, seed: int = 0) -> list[SupervisedBatch]:
    """``steps`` batches of prompt + noisy answer + end-of-sequence; only the answer is trained."""
    rng = random.Random(seed)
    out = []
    for _ in range(steps):
        ids, masks = [], []
        for p in rng.choices(problems, k=WARMUP_BATCH):
            prompt = tokenizer.encode_prompt(p.to_data())
            answer = tokenizer.encode(noisy_target(p.answer, rng)) + [tokenizer.stop_ids[0]]
            ids.append(prompt + answer)
            masks.append([0] * len(prompt) + [1] * len(answer))
        out.append((pad_rows(ids, tokenizer.pad_id), pad_rows([[1] * len(r) for r in ids]).bool(),
                    pad_rows(masks).float()))
    return out
