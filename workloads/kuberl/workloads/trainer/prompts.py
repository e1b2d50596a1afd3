"""Prompts of the current curriculum stage, handed out in a shuffled cycle."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from kuberl.workloads.buffer.records import Prompt
from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.rl.curriculum import Stage
from kuberl.workloads.logs import get_logger
from kuberl.workloads.policy.tokenizer import Tokenizer
from kuberl.workloads.episodes.generate import SamplingSettings
from kuberl.workloads.policy.job_model import job_s3_client
from kuberl.workloads.tasks.datasets import Problem, filter_problems, load_dataset

log = get_logger(__name__)


def curriculum_stages(cfg: WorkloadConfig) -> list[Stage]:
    if cfg.curriculum is None:
        return [Stage(name="all")]
    return [Stage.from_spec(s) for s in cfg.curriculum.stages]


@dataclass
class PromptSource:
    """Problems of the current curriculum stage, handed out in a shuffled cycle."""

    cfg: WorkloadConfig
    tokenizer: Tokenizer
    seed: int = 0
    issued: int = 0

    def __post_init__(self) -> None:
        self.incarnation = uuid.uuid4().hex[:6]
        loaded = [p for ds in self.cfg.datasets for p in load_dataset(ds, s3_client=job_s3_client(self.cfg, ds.source))]
        # algorithm.maxPromptLength: prompts longer than this (as the engines receive them: chat template, BOS) are
        # skipped.
        limit = self.cfg.algorithm.max_prompt_length
        self.problems: list[Problem] = [p for p in loaded if len(self.tokenizer.encode_prompt(p.to_data())) <= limit]
        if not self.problems:
            raise ValueError(f"every prompt of the datasets is longer than algorithm.maxPromptLength={limit} tokens; "
                             f"raise it")
        if len(self.problems) < len(loaded):
            log.info("prompts over algorithm.maxPromptLength skipped", skipped=len(loaded) - len(self.problems),
                     limit=limit)
        self._by_stage: dict[int, list[Problem]] = {}

    def stage_problems(self, stage: int) -> list[Problem]:
        if stage not in self._by_stage:
            chosen = self.problems
            if self.cfg.curriculum is not None:
                spec = self.cfg.curriculum.stages[stage]
                rng = spec.difficulty
                chosen = filter_problems(self.problems, spec.datasets, rng.min if rng else None,
                                         rng.max if rng else None)
            if not chosen:
                raise ValueError(f"curriculum stage {stage} selects no problems")
            self._by_stage[stage] = chosen
        return self._by_stage[stage]

    def group_size(self, stage: int) -> int:
        if self.cfg.curriculum is not None and self.cfg.curriculum.stages[stage].samples_per_prompt:
            return self.cfg.curriculum.stages[stage].samples_per_prompt
        return self.cfg.algorithm.group_size

    def sampling(self, stage: int) -> SamplingSettings:
        return SamplingSettings.for_stage(self.cfg, stage)

    def take(self, n: int, stage: int) -> list[Prompt]:
        pool = self.stage_problems(stage)
        out = []
        for _ in range(n):
            cycle, pos = divmod(self.issued, len(pool))
            order = list(range(len(pool)))
            random.Random(f"{self.seed}/{stage}/{cycle}").shuffle(order)
            p = pool[order[pos]]
            # The issue counter makes each prompt instance unique (the same problem recurs); the
            # incarnation tag keeps a restarted trainer, whose counter resumes from its checkpoint,
            # from re-using ids the crashed one already published: the prompts stream would drop
            # them as duplicates (Nats-Msg-Id window) and the feeder would wait for the re-issue.
            out.append(Prompt(f"{p.prompt_id}@{self.incarnation}.{self.issued}", p.to_data(),
                              n_samples=self.group_size(stage), stage=stage))
            self.issued += 1
        return out
