"""The trainer's model seam: one `TrainerBackend`, chosen by ``trainer.backend``.

Everything the trainer process does with its policy goes through this interface: the
update (`rl.ppo.ppo_update` on ``policy``), the warm start, checkpoints, and the full
HF-named weights that engines load and the weight store publishes. A backend is built
from a local HF directory (`policy.sources`), so the builtin tiny model and a user's
model take one path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.rl.ppo import PolicyBackend, RolloutBatch, StepResult
from kuberl.workloads.spec import AlgorithmSpec
from kuberl.workloads.weights.sync import Published, weight_store

SupervisedBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(ids [B, T], valid [B, T] bool, loss mask [B, T] float): one warm-start batch."""


@dataclass(frozen=True)
class PublishRequest:
    """One weight sync as the trainer asks for it; each backend publishes its own way."""

    version: int
    dtype: str  # what the engines serve (model.dtype)
    fp8: bool  # weightStore.fp8: linear layers as blockwise FP8
    full_every: int  # weightStore.fullVersionEvery: deltas against the last version in between
    last: Published | None  # the version this process published before (its manifest, its files when kept)
    keep_in: Path | None  # where a one-process backend keeps the version's files for the next delta


class TrainerBackend(Protocol):
    policy: PolicyBackend
    reference: PolicyBackend | None  # the frozen policy the KL term pulls towards (klCoef > 0)
    hf_config: dict

    def hf_state(self) -> dict[str, torch.Tensor]:
        """The full weights with HF names, float32 on CPU (engines, evaluation)."""

    def publish(self, request: PublishRequest) -> Published | None:
        """The current weights to the weight store as ``request.version``, retried through an
        outage: one process publishes them whole (the tiny model), a gang in parts, each rank
        its own share (`weights.shards`). The `Published` on the process that runs the
        trainer's loop; None on the gang's other ranks."""

    def ppo_update(self, batch: RolloutBatch, algo: AlgorithmSpec, max_steps: int | None) -> Iterator[StepResult]:
        """`rl.ppo.ppo_update` of ``policy`` (against ``reference``), over every rank of the gang."""

    def warm_start(self, batches: list[SupervisedBatch], learning_rate: float) -> float:
        """Supervised steps (token mean NLL over each batch's mask), own optimizer; the last loss."""

    def fresh_start(self, keep_reference: bool) -> None:
        """After the warm start: a fresh RL optimizer, and the reference frozen from the current weights."""

    def checkpoint_state(self) -> dict:
        """Model, optimizer and reference as one picklable dict."""

    def load_checkpoint_state(self, state: dict, keep_reference: bool) -> None: ...


def make_backend(cfg: WorkloadConfig, model_dir: Path) -> TrainerBackend:
    """The backend ``trainer.backend`` names, holding the weights in ``model_dir``."""
    if cfg.trainer_backend == "torch":
        from kuberl.workloads.policy.tiny.backend import TinyTrainerBackend

        return TinyTrainerBackend(model_dir, cfg.algorithm, weight_store(cfg))
    if cfg.trainer_backend == "megatron":
        from kuberl.workloads.policy.megatron.backend import MegatronTrainerBackend
        from kuberl.workloads.policy.megatron.gang import GangDriver

        return GangDriver(MegatronTrainerBackend(model_dir, cfg))
    raise ValueError(f"trainer.backend {cfg.trainer_backend!r}: use megatron or torch")
