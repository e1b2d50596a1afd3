"""The multi-stage difficulty curriculum: when a stage ends. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Stage:
    name: str
    until_steps: int | None = None  # optimizer steps spent in this stage
    until_pass_rate: float | None = None  # moving mean pass rate to reach
    window: int = 4  # steps the pass rate is averaged over
    samples_per_prompt: int | None = None
    max_response_length: int | None = None

    @classmethod
    def from_spec(cls, stage: Any) -> Stage:
        """From a jobspec ``CurriculumStage`` (duck-typed: only attributes are read)."""
        until = getattr(stage, "until", None)
        return cls(
            name=stage.name,
            until_steps=getattr(until, "steps", None),
            until_pass_rate=getattr(until, "pass_rate", None),
            window=getattr(until, "window", 4) or 4,
            samples_per_prompt=getattr(stage, "samples_per_prompt", None),
            max_response_length=getattr(stage, "max_response_length", None),
        )


@dataclass(frozen=True)
class CurriculumState:
    stage: int = 0
    stage_start_step: int = 0
    recent_pass_rates: tuple[float, ...] = ()


def curriculum_step(stages: Sequence[Stage], state: CurriculumState, step: int, pass_rate: float) -> CurriculumState:
    """The state after optimizer step ``step`` (count of steps done) with this step's pass rate.

    The last stage never ends. A stage ends when it has run ``until_steps`` steps, or when the
    mean of its last ``window`` pass rates reaches ``until_pass_rate`` (a full window is
    required, so one lucky batch does not switch).
    """
    stage = stages[state.stage]
    recent = (*state.recent_pass_rates, float(pass_rate))[-stage.window :]
    if state.stage >= len(stages) - 1:
        return replace(state, recent_pass_rates=recent)
    by_steps = stage.until_steps is not None and step - state.stage_start_step >= stage.until_steps
    by_rate = (stage.until_pass_rate is not None and len(recent) >= stage.window
               and sum(recent) / len(recent) >= stage.until_pass_rate)
    if by_steps or by_rate:
        return CurriculumState(stage=state.stage + 1, stage_start_step=step, recent_pass_rates=())
    return replace(state, recent_pass_rates=recent)
