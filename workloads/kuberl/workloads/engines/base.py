"""The engine interface every generation backend implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class GenerationRequest:
    """Sample ``n`` continuations of one prompt; generation ends at any of ``stop_ids``
    (the tokenizer's, `Tokenizer.stop_ids`) or after ``max_new_tokens``."""

    prompt_ids: list[int]
    n: int = 1
    max_new_tokens: int = 16
    temperature: float = 1.0
    stop_ids: tuple[int, ...] = ()


@dataclass
class Completion:
    """One sampled continuation; ``token_ids`` include the stop token when one was produced."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop", "length" or "abort"
    policy_version: int = 0
    meta: dict = field(default_factory=dict)


class Engine(abc.ABC):
    """What the rollout agent and the colocated trainer need from an inference engine."""

    policy_version: int = -1

    @abc.abstractmethod
    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        """One list of ``request.n`` completions per request, in order."""

    @abc.abstractmethod
    def load_state_dict(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        """Replace the weights (HF names) and tag later generations with ``version``."""

    def load_dir(self, path: Path, version: int) -> None:
        """Replace the weights with the HF checkpoint directory ``path`` (a fetched version).

        The default reads the tensors (FP8 dequantised) into `load_state_dict`; an engine
        that reads checkpoints itself (SGLang) loads the directory as it is.
        """
        from kuberl.workloads.weights.sync import read_checkpoint_dir

        self.load_state_dict(read_checkpoint_dir(path), version)

    def pause(self) -> None:
        """Stop starting new generations (in-flight ones finish)."""

    def resume(self) -> None:
        """Undo `pause`."""

    def abort(self, requests: list[GenerationRequest]) -> int:
        """Stop generating for these requests of the running `generate` call, if the engine
        can (their completions then end early with finish reason "abort"); returns how many
        rows it stopped. The default cannot: the batch runs to its end."""
        return 0
