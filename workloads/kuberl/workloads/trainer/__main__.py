"""The trainer process: `python -m kuberl.workloads.trainer`.

With ``trainer.backend: megatron`` and a gang of several ranks it re-executes itself under
torchrun (`policy.megatron.gang`): rank 0 is the trainer, the other ranks follow it.
"""

from __future__ import annotations

import asyncio
import os

import torch

from kuberl.workloads.config import load_config
from kuberl.workloads.localproc import die_with_parent_now
from kuberl.workloads.logs import get_logger
from kuberl.workloads.observe.serve import serve_metrics
from kuberl.workloads.policy.job_model import job_model_dir
from kuberl.workloads.signals import exit_on_sigterm

log = get_logger(__name__)


def follow_as_rank(cfg) -> None:
    from kuberl.workloads.policy.megatron.backend import MegatronTrainerBackend
    from kuberl.workloads.policy.megatron.gang import follow, rank

    calls = follow(MegatronTrainerBackend(job_model_dir(cfg), cfg))
    log.info("trainer rank finished", job=cfg.job.name, rank=rank(), calls=calls)


def main() -> None:
    from kuberl.workloads.policy.megatron.gang import is_rank, launch_argv, rank, release_followers

    torch.set_num_threads(int(os.environ.get("KUBERL_TORCH_THREADS", "1")))
    exit_on_sigterm(log)
    cfg = load_config()
    argv = launch_argv(cfg.trainer_backend, os.environ)
    if argv is not None:
        job_model_dir(cfg)  # fetched once, before the ranks look for it
        log.info("starting the trainer gang", argv=argv[3:])
        os.execv(argv[0], argv)
    if is_rank(os.environ):
        die_with_parent_now()
    if rank() != 0:
        follow_as_rank(cfg)
        return
    from kuberl.workloads.trainer.colocated import run_colocated
    from kuberl.workloads.trainer.decoupled import run_decoupled

    log.info("trainer starting", job=cfg.job.name, mode=cfg.mode, max_steps=cfg.run_policy.max_steps)
    serve_metrics()
    asyncio.run(run_colocated(cfg) if cfg.mode == "colocated" else run_decoupled(cfg))
    release_followers()
    log.info("trainer finished", job=cfg.job.name)


if __name__ == "__main__":
    main()
