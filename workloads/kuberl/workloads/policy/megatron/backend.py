"""megatron-core as a `TrainerBackend` (``trainer.backend: megatron``).

One instance per rank of the trainer gang (`policy.megatron.gang`): torchrun starts the
ranks, or a one-rank gang is initialised here (gloo on CPU, NCCL on GPU). Tensor and
pipeline parallel sizes come from ``trainer.parallelism``; the data-parallel size is what
is left, ranks / (tensor x pipeline). Each data-parallel rank trains on its share of every
optimizer mini-batch (`rl.ppo.data_parallel_share`); the loss is normalised by the token
count over the whole mini-batch on all ranks, and gradients are summed over them.

Checkpoints hold the weights, the optimizer's state (`optimizer_state`) and the reference
policy, all in HF layout: a gang of any shape (tensor, pipeline, data parallel) resumes one.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.policy.backend import PublishRequest, SupervisedBatch
from kuberl.workloads.policy.megatron.gang import control_group
from kuberl.workloads.policy.megatron.optimizer_state import export_adam_state, load_adam_state
from kuberl.workloads.policy.megatron.policy import MegatronPolicy, load_hf_dir
from kuberl.workloads.rl.ppo import RolloutBatch, StepResult, data_parallel_share, ppo_update
from kuberl.workloads.spec import AlgorithmSpec
from kuberl.workloads.weights.manifest import delta_allowed, version_name
from kuberl.workloads.weights.outage import through_outage
from kuberl.workloads.weights.shards import commit_parts, publish_part
from kuberl.workloads.weights.stages import StageClock
from kuberl.workloads.weights.sync import Published, engine_state, weight_store

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def init_gang() -> None:
    """The process group: torchrun's (env://) when it started us, else one rank on a free local port."""
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "LOCAL_RANK" in os.environ:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend, init_method="env://")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", world_size=1, rank=0)


def gang_refusal(cfg: WorkloadConfig, ranks: int) -> str | None:
    """Why this gang cannot train the job (None when it can). The operator refuses the same
    combinations up front (`decisions.support`); this is the process's own guard."""
    par = cfg.parallelism
    if par.context > 1 or par.expert > 1:
        return (f"trainer.parallelism context {par.context} / expert {par.expert}: the megatron trainer runs tensor, "
                "pipeline and data parallel; set context and expert to 1")
    if ranks % (par.tensor * par.pipeline):
        return (f"the trainer gang has {ranks} ranks, not a multiple of tensor x pipeline = "
                f"{par.tensor * par.pipeline}: "
                "set trainer.replicas x gpusPerReplica to a multiple of it")
    return None


class MegatronTrainerBackend:
    def __init__(self, model_dir: Path, cfg: WorkloadConfig):
        init_gang()
        refusal = gang_refusal(cfg, dist.get_world_size())
        if refusal is not None:
            raise ValueError(refusal)
        self.control = control_group()  # every rank creates it, in the same order
        self.cfg = cfg
        self.hf_config, weights = load_hf_dir(model_dir)
        if weights is None:
            raise FileNotFoundError(f"{model_dir}: no *.safetensors weights to start from")
        self.policy = self._policy()
        self.policy.load_hf_state(weights)
        self.reference: MegatronPolicy | None = None
        self.store = weight_store(cfg)  # every owning rank uploads its part of each version
        # This rank's part of the version published last, for the next one's delta; on the
        # pod's emptyDir, gone with a restart (the first version after one is whole).
        self.parts_dir = Path(tempfile.mkdtemp(prefix="kuberl-parts-"))
        atexit.register(shutil.rmtree, self.parts_dir, True)

    def _policy(self) -> MegatronPolicy:
        algo, par = self.cfg.algorithm, self.cfg.parallelism
        return MegatronPolicy(self.hf_config, tensor_parallel=par.tensor, pipeline_parallel=par.pipeline,
                              dtype=DTYPES[self.cfg.model.dtype], learning_rate=algo.learning_rate,
                              weight_decay=algo.weight_decay, grad_clip=algo.grad_clip, seed=self.cfg.run_policy.seed)

    def hf_state(self) -> dict[str, torch.Tensor]:
        """A collective over the model-parallel group; every rank gets the full weights."""
        return {k: v.float().cpu() for k, v in self.policy.export_hf_state().items()}

    def publish(self, request: PublishRequest) -> Published | None:
        """A weight sync in parts (`weights.shards`), a collective over the gang: each rank
        that owns parameters uploads their HF tensors, rank 0 writes the manifest last and
        gets the `Published` (the others None). Between whole versions (fullVersionEvery)
        each part is stored as deltas against the rank's own file of the last version."""
        version, dtype, use_fp8 = request.version, request.dtype, request.fp8
        last = request.last.manifest if request.last is not None else None
        parent = (last.version, last.depth) if delta_allowed(last, request.full_every) else None
        keep = request.full_every > 1
        t0, clock = time.monotonic(), StageClock()
        owned = self.policy.owned_hf_state()  # a collective over the tensor-parallel group
        part = None
        if owned:
            with clock.stage("quantise"):
                state, kept = engine_state(owned, dtype, use_fp8)
            index, parts = self.policy.pp_rank * self.policy.tp + self.policy.tp_rank, self.policy.tp * self.policy.pp
            part = through_outage(lambda: publish_part(self.store, state, version, index, parts,
                                                       keep_dir=self.parts_dir,
                                                       parent=parent[0] if parent else None, kept=kept, clock=clock),
                                  f"weights version {version}, part {index + 1} of {parts}")
            if not keep:
                shutil.rmtree(self.parts_dir / version_name(version), ignore_errors=True)
        gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(part, gathered, dst=0, group=self.control)
        if dist.get_rank() != 0:
            return None
        parts_done = [p for p in gathered if p is not None]
        commit = StageClock()
        manifest = through_outage(lambda: commit_parts(self.store, version, parts_done, self.hf_config, dtype=dtype,
                                                       use_fp8=use_fp8, parent=parent, clock=commit),
                                  f"weights version {version}, manifest")
        stages: dict[str, float] = dict(commit.seconds())
        for p in parts_done:  # per-rank stages add up, as per-file stages do over threads
            for name, seconds in p.stages.items():
                stages[name] = round(stages.get(name, 0.0) + seconds, 3)
        return Published(self.store.manifest_uri(version), manifest.total_bytes, time.monotonic() - t0, version,
                         manifest.digest, stored_bytes=manifest.stored_bytes, parent=manifest.parent, stages=stages,
                         manifest=manifest)

    def ppo_update(self, batch: RolloutBatch, algo: AlgorithmSpec, max_steps: int | None) -> Iterator[StepResult]:
        """`rl.ppo.ppo_update`, each data-parallel rank on its share of every mini-batch."""
        dp, dp_rank = self.policy.dp, self.policy.dp_rank
        share = None if dp == 1 else functools.partial(data_parallel_share, dp=dp, dp_rank=dp_rank)
        return ppo_update(self.policy, batch, algo, reference=self.reference, max_steps=max_steps, local_rows=share)

    def warm_start(self, batches: list[SupervisedBatch], learning_rate: float) -> float:
        # Every data-parallel rank takes the same batches: the warm start is a few small
        # steps, and identical replicas need no gradient exchange.
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
        self.policy.optimizer = torch.optim.AdamW(self.policy.core.parameters(), lr=algo.learning_rate,
                                                  weight_decay=algo.weight_decay)
        self.reference = self._frozen_copy() if keep_reference else None

    def checkpoint_state(self) -> dict:
        """A collective: the whole state in HF layout on rank 0 (the other ranks get None)."""
        model = self.hf_state()
        reference = {k: v.float().cpu() for k,
                     v in self.reference.export_hf_state().items()} if self.reference is not None else None
        optimizer = export_adam_state(self.policy)
        if dist.get_rank() != 0:
            return None
        return {"model": model, "optimizer_hf": optimizer,
                **({"reference": reference} if reference is not None else {})}

    def load_checkpoint_state(self, state: dict, keep_reference: bool) -> None:
        if "optimizer_hf" not in state:
            raise ValueError("the latest checkpoint was written by the torch trainer "
                             "(trainer.backend: torch), which megatron cannot resume: set "
                             "trainer.backend back to torch, or start afresh with a new checkpoint.uri")
        self.policy.load_hf_state(state["model"])
        load_adam_state(self.policy, state["optimizer_hf"])
        if keep_reference:
            self.reference = self._policy()
            self.reference.load_hf_state(state["reference"])
            self.reference.model.eval()
