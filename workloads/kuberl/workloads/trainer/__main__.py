"""The trainer process: `python -m kuberl.workloads.trainer`."""

from __future__ import annotations

import asyncio
import os

import torch

from kuberl.workloads.config import load_config
from kuberl.workloads.logs import get_logger
from kuberl.workloads.signals import exit_on_sigterm
from kuberl.workloads.observe.serve import serve_metrics
from kuberl.workloads.trainer.colocated import run_colocated
from kuberl.workloads.trainer.decoupled import run_decoupled

log = get_logger(__name__)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("KUBERL_TORCH_THREADS", "1")))
    exit_on_sigterm(log)
    cfg = load_config()
    log.info("trainer starting", job=cfg.job.name, mode=cfg.mode, max_steps=cfg.run_policy.max_steps)
    serve_metrics()
    asyncio.run(run_colocated(cfg) if cfg.mode == "colocated" else run_decoupled(cfg))
    log.info("trainer finished", job=cfg.job.name)


if __name__ == "__main__":
    main()
