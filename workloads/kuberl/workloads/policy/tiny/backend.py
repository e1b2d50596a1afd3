"""The pure-torch model as a `TrainerBackend` (``trainer.backend: torch``): one process, float32."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import torch

from kuberl.workloads.policy.backend import PublishRequest, SupervisedBatch
from kuberl.workloads.policy.tiny.model import load_pretrained
from kuberl.workloads.policy.tiny.train import TinyBackend, make_optimizer, sequence_logprobs
from kuberl.workloads.rl.ppo import RolloutBatch, StepResult, ppo_update
from kuberl.workloads.spec import AlgorithmSpec
from kuberl.workloads.weights.outage import through_outage
from kuberl.workloads.weights.store import WeightStore
from kuberl.workloads.weights.sync import Published, publish_policy


class TinyTrainerBackend:
    def __init__(self, model_dir: Path, algo: AlgorithmSpec, store: WeightStore):
        self.algo, self.store = algo, store
        self.model = load_pretrained(model_dir)
        self.hf_config = self.model.config.to_hf()
        self.optimizer = make_optimizer(self.model, algo)
        self.policy = TinyBackend(self.model, self.optimizer, algo.grad_clip)
        self.reference: TinyBackend | None = None

    def hf_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().clone() for k, v in self.model.state_dict().items()}

    def publish(self, request: PublishRequest) -> Published:
        """The whole state from this one process (`publish_policy`)."""
        state, last = self.hf_state(), request.last.local if request.last is not None else None
        return through_outage(lambda: publish_policy(self.store, state, self.hf_config, request.version, request.fp8,
                                                     dtype=request.dtype, keep_in=request.keep_in, last=last,
                                                     full_every=request.full_every),
                              f"weights version {request.version}")

    def ppo_update(self, batch: RolloutBatch, algo: AlgorithmSpec, max_steps: int | None) -> Iterator[StepResult]:
        return ppo_update(self.policy, batch, algo, reference=self.reference, max_steps=max_steps)

    def warm_start(self, batches: list[SupervisedBatch], learning_rate: float) -> float:
        opt = torch.optim.AdamW(self.model.parameters(), lr=learning_rate, weight_decay=0.0)
        loss_value = float("nan")
        for ids, valid, mask in batches:
            lp = sequence_logprobs(self.model, ids, valid)[0]
            loss = -(lp * mask).sum() / mask.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_value = float(loss.detach())
        return loss_value

    def fresh_start(self, keep_reference: bool) -> None:
        self.optimizer = make_optimizer(self.model, self.algo)
        self.policy = TinyBackend(self.model, self.optimizer, self.algo.grad_clip)
        self.reference = TinyBackend(copy.deepcopy(self.model).eval()) if keep_reference else None

    def checkpoint_state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                **({"reference": self.reference.model.state_dict()} if self.reference is not None else {})}

    def load_checkpoint_state(self, state: dict, keep_reference: bool) -> None:
        if "optimizer" not in state:
            raise ValueError("the latest checkpoint was written by the megatron trainer (trainer.backend: megatron), "
                             "which "
                             "the torch trainer cannot resume: set trainer.backend back to megatron, or start afresh "
                             "with a new checkpoint.uri")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if keep_reference:
            self.reference = TinyBackend(copy.deepcopy(self.model).eval())
            self.reference.model.load_state_dict(state["reference"])
