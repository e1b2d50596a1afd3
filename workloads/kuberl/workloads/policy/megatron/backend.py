"""megatron-core as a `TrainerBackend` (``trainer.backend: megatron``).

The trainer process holds every rank of the model-parallel group it runs; today that is a
single-rank gang (TP = PP = 1, one replica): torch.distributed is initialised here with one
gloo (CPU) or NCCL (GPU) rank when the process was not started by torchrun. Larger gangs
are refused before the job starts (`kuberl.operator.decisions.support`), so nothing trains
with a parallelism the manifest did not get.

Checkpoints hold the HF-named weights and the optimizer state, which on one rank is the
whole state; `MegatronPolicy.save_checkpoint` (dist_checkpointing) is for sharded gangs.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.policy.backend import SupervisedBatch
from kuberl.workloads.policy.megatron.policy import MegatronPolicy, load_hf_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def init_single_rank() -> None:
    """A one-rank process group on a free local port, unless torchrun already made one."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise RuntimeError("WORLD_SIZE > 1: start the trainer under torchrun with every rank, not as one process")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", world_size=1, rank=0)


def gang_ranks() -> int:
    """The ranks the operator gave the gang (NNODES x NPROC_PER_NODE); 1 outside a cluster."""
    return int(os.environ.get("NNODES", "1")) * int(os.environ.get("NPROC_PER_NODE", "1"))


def single_rank_refusal(cfg: WorkloadConfig, ranks: int = 1) -> str | None:
    """Why this job cannot run as one megatron rank (None when it can): a gang of several
    ranks would otherwise train on one of its GPUs while the manifest asked for all."""
    par = cfg.parallelism
    if ranks > 1:
        return (f"the trainer gang has {ranks} ranks (trainer.replicas x gpusPerReplica); the megatron trainer runs "
                "one rank until the torchrun gang lands (issue 13): set trainer.replicas 1 and gpusPerReplica 0 or 1")
    if par.tensor * par.pipeline * par.context * par.expert == 1:
        return None
    return (f"trainer.parallelism (tensor {par.tensor}, pipeline {par.pipeline}, context {par.context}, expert {par.expert}) "
            "needs a multi-rank gang; the megatron trainer runs one rank until the torchrun gang lands (issue 13): "
            "set every parallelism size to 1")


class MegatronTrainerBackend:
    def __init__(self, model_dir: Path, cfg: WorkloadConfig):
        refusal = single_rank_refusal(cfg, gang_ranks())
        if refusal is not None:
            raise ValueError(refusal)
        init_single_rank()
        self.cfg = cfg
        self.hf_config, weights = load_hf_dir(model_dir)
        if weights is None:
            raise FileNotFoundError(f"{model_dir}: no *.safetensors weights to start from")
        self.policy = self._policy()
        self.policy.load_hf_state(weights)
        self.reference: MegatronPolicy | None = None

    def _policy(self) -> MegatronPolicy:
        algo, par = self.cfg.algorithm, self.cfg.parallelism
        return MegatronPolicy(self.hf_config, tensor_parallel=par.tensor, pipeline_parallel=par.pipeline,
                              dtype=DTYPES[self.cfg.model.dtype], learning_rate=algo.learning_rate,
                              weight_decay=algo.weight_decay, grad_clip=algo.grad_clip, seed=self.cfg.run_policy.seed)

    def hf_state(self) -> dict[str, torch.Tensor]:
        return {k: v.float().cpu() for k, v in self.policy.export_hf_state().items()}

    def warm_start(self, batches: list[SupervisedBatch], learning_rate: float) -> float:
        opt = torch.optim.AdamW(self.policy.core.parameters(), lr=learning_rate, weight_decay=0.0)
        losses: list[float] = []
        for ids, valid, mask in batches:
            def nll(logp: torch.Tensor, _entropy, mask=mask) -> torch.Tensor:
                loss = -(logp * mask).sum() / mask.sum()
                losses.append(float(loss.detach()))
                return loss

            opt.zero_grad(set_to_none=True)
            self.policy.forward_backward(ids, valid, 1.0, nll)
            opt.step()
        return losses[-1] if losses else float("nan")

    def _frozen_copy(self) -> MegatronPolicy:
        ref = self._policy()
        ref.load_hf_state(self.policy.export_hf_state())
        ref.model.eval()
        return ref

    def fresh_start(self, keep_reference: bool) -> None:
        algo = self.cfg.algorithm
        self.policy.optimizer = torch.optim.AdamW(self.policy.core.parameters(), lr=algo.learning_rate, weight_decay=algo.weight_decay)
        self.reference = self._frozen_copy() if keep_reference else None

    def checkpoint_state(self) -> dict:
        return {"model": self.hf_state(), "optimizer": self.policy.optimizer.state_dict(),
                **({"reference": {k: v.float().cpu() for k, v in self.reference.export_hf_state().items()}}
                   if self.reference is not None else {})}

    def load_checkpoint_state(self, state: dict, keep_reference: bool) -> None:
        self.policy.load_hf_state(state["model"])
        self.policy.optimizer.load_state_dict(state["optimizer"])
        if keep_reference:
            self.reference = self._policy()
            self.reference.load_hf_state(state["reference"])
            self.reference.model.eval()
