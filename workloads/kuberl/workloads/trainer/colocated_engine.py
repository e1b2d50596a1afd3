"""The engine colocated mode generates with (``trainer.colocatedEngine``), and what it does around training.

* ``torch``: an in-process engine on a copy of the trainer's weights.
* ``sglang``: an SGLang server that trainer rank 0 starts beside itself on the same GPUs
  (`engines.sglang.launcher`; on CPU the pinned CPU build), serving the job's model in
  ``model.dtype``. Each step: generate → release the server's GPU memory → train → resume
  it → update its weights in place from a shared-memory directory (``/update_weights_from_disk``
  on files written to /dev/shm). On CPU the release and resume are skipped: SGLang's
  ``/release_memory_occupation`` calls into CUDA and kills a CPU server, and there is no
  device memory to share.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import torch

from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.engines.batching import BatchingEngine
from kuberl.workloads.engines.torch_engine import TorchEngine
from kuberl.workloads.logs import get_logger
from kuberl.workloads.policy.job_model import job_model_dir

log = get_logger(__name__)

SHARED_MEMORY = Path("/dev/shm")
GPU_MEMORY_FRACTION = 0.4  # of each GPU for weights and KV cache while generating (released while training)


class ColocatedEngine:
    def __init__(self, batcher: BatchingEngine, server=None, scratch: Path | None = None):
        self.batcher, self.server, self.scratch = batcher, server, scratch
        self.releases_memory = server is not None and torch.cuda.is_available()

    @classmethod
    async def start(cls, cfg: WorkloadConfig, tr) -> ColocatedEngine:
        """The engine holding the trainer's current weights (after its warm start or resume)."""
        if cfg.rollout.engine == "torch":
            # The sampling seed moves with the step, so a resumed run does not replay the same samples.
            seed = cfg.run_policy.seed * 1_000_003 + tr.progress.step
            return cls(BatchingEngine(TorchEngine(tr.engine_model(), version=tr.progress.version, seed=seed)))
        from kuberl.workloads.engines.sglang.engine import SGLangEngine
        from kuberl.workloads.engines.sglang.launcher import ServerConfig, SGLangServer

        gpu = torch.cuda.is_available()
        server = SGLangServer(ServerConfig(
            model_path=str(job_model_dir(cfg)), device="cuda" if gpu else "cpu", dtype=cfg.model.dtype,
            tp_size=max(1, torch.cuda.device_count()) if gpu else 1,
            mem_fraction_static=GPU_MEMORY_FRACTION if gpu else 0.05,
            random_seed=cfg.run_policy.seed + tr.progress.step), log_path="-")
        await asyncio.to_thread(server.start, timeout=900)
        shm = SHARED_MEMORY if SHARED_MEMORY.is_dir() else None
        scratch = Path(tempfile.mkdtemp(prefix="kuberl-colocated-", dir=shm))
        engine = cls(BatchingEngine(SGLangEngine(server.url, version=-1, scratch_dir=scratch)), server, scratch)
        if not engine.releases_memory:
            log.info("colocated SGLang on CPU: GPU memory release/resume skipped (no device memory to share)")
        await engine.update(await asyncio.to_thread(tr.backend.hf_state), tr.progress.version)
        return engine

    async def before_training(self) -> None:
        if self.releases_memory:
            await asyncio.to_thread(self.batcher.engine.client.release_memory_occupation)

    async def update(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        """After training: the engine gets its memory back and the new weights, in place."""
        if self.releases_memory:
            await asyncio.to_thread(self.batcher.engine.client.resume_memory_occupation)
        await self.batcher.swap(tensors, version)

    async def close(self) -> None:
        await self.batcher.stop()
        if self.server is not None:
            close = getattr(self.batcher.engine, "close", None)
            if close is not None:
                close()
            self.server.stop()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
