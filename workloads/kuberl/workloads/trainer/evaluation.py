"""Held-out evaluation of the current policy: greedy and sampled, pass@1 and pass@k.

Episodes run through the same route as training rollouts (`episodes.generate.run_group`:
verifier, python reward or agent environment), on an engine holding the policy being
evaluated; nothing here is trained on. A response passes when its reward is at least 1.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import aiohttp

from kuberl.workloads.buffer.records import Prompt
from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.engines.batching import BatchingEngine
from kuberl.workloads.policy.tokenizer import Tokenizer
from kuberl.workloads.episodes.generate import SamplingSettings, run_group
from kuberl.workloads.policy.job_model import job_s3_client
from kuberl.workloads.tasks.datasets import Problem, load_dataset

PASS_REWARD = 1.0


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``correct`` passed (Chen et al. 2021):
    1 − C(n−c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


@dataclass(frozen=True)
class DatasetScore:
    """One dataset's evaluation at one policy version."""

    greedy: float  # share of prompts whose greedy response passes
    pass_at_1: float  # mean over prompts of the sampled pass rate
    pass_at_k: float  # mean over prompts of pass@k, k = samplesPerPrompt
    reward_mean: float  # mean reward of the sampled responses
    prompts: int

    def metrics(self, dataset: str, k: int) -> dict[str, float]:
        return {f"eval/{dataset}/greedy": round(self.greedy, 4), f"eval/{dataset}/pass@1": round(self.pass_at_1, 4),
                f"eval/{dataset}/pass@{k}": round(self.pass_at_k, 4),
                f"eval/{dataset}/reward_mean": round(self.reward_mean, 4)}


def score_dataset(greedy_rewards: list[float], sampled_rewards: list[list[float]], k: int) -> DatasetScore:
    """The summary of one dataset's responses (pure)."""
    prompts = len(sampled_rewards)
    passed = [sum(r >= PASS_REWARD for r in row) for row in sampled_rewards]
    flat = [r for row in sampled_rewards for r in row]
    return DatasetScore(
        greedy=sum(r >= PASS_REWARD for r in greedy_rewards) / max(len(greedy_rewards), 1),
        pass_at_1=sum(c / len(row) for c, row in zip(passed, sampled_rewards, strict=True)) / max(prompts, 1),
        pass_at_k=sum(pass_at_k(len(row), c, k) for c, row in zip(passed, sampled_rewards, strict=True)) / max(prompts,
                                                                                                               1),
        reward_mean=sum(flat) / max(len(flat), 1),
        prompts=prompts,
    )


class Evaluator:
    """The job's `evaluation` section: its held-out problems, loaded once."""

    def __init__(self, cfg: WorkloadConfig, tokenizer: Tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        spec = cfg.evaluation
        self.problems: dict[str, list[Problem]] = (
            {
                ds.name: load_dataset(ds, s3_client=job_s3_client(cfg, ds.source))[: spec.max_prompts]
                for ds in spec.datasets
            }
            if spec is not None
            else {}
        )

    @property
    def enabled(self) -> bool:
        return bool(self.problems)

    async def run(self, engine: BatchingEngine, session: aiohttp.ClientSession | None) -> dict[str, float]:
        """Every dataset, greedy (one response, temperature 0) and sampled (k responses)."""
        k = self.cfg.evaluation.samples_per_prompt
        length = self.cfg.algorithm.max_response_length
        greedy_s, sampled_s = SamplingSettings(length, 0.0), SamplingSettings(length, self.cfg.algorithm.temperature)
        out: dict[str, float] = {}
        for name, problems in self.problems.items():
            def prompt(p: Problem, n: int, tag: str) -> Prompt:
                return Prompt(f"eval-{tag}-{p.prompt_id}", p.to_data(), n_samples=n)

            greedy, sampled = await asyncio.gather(
                asyncio.gather(*(run_group(engine, prompt(p, 1, "g"), self.cfg.reward, greedy_s, self.tokenizer,
                                           session, self.cfg.agent_envs) for p in problems)),
                asyncio.gather(*(run_group(engine, prompt(p, k, "s"), self.cfg.reward, sampled_s, self.tokenizer,
                                           session, self.cfg.agent_envs) for p in problems)),
            )
            score = score_dataset([g[0].reward for g in greedy], [[t.reward for t in g] for g in sampled], k)
            out.update(score.metrics(name, k))
            # A held-out sample that could not be scored counts as not passed (the scores stay
            # comparable across evaluations, never inflated by dropping hard cases); how many is said.
            out[f"eval/{name}/infra_failed"] = sum(t.failure is not None for g in (*greedy, *sampled) for t in g)
        return out
