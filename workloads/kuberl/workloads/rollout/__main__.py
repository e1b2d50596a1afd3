"""The rollout agent process: `python -m kuberl.workloads.rollout`."""

from __future__ import annotations

import asyncio
import os

import torch

from kuberl.workloads.config import load_config
from kuberl.workloads.logs import get_logger
from kuberl.workloads.signals import exit_on_sigterm
from kuberl.workloads.observe.serve import serve_metrics
from kuberl.workloads.rollout.agent import RolloutAgent

log = get_logger(__name__)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("KUBERL_TORCH_THREADS", "1")))
    exit_on_sigterm(log)
    cfg = load_config()
    # Unique per pod (POD_NAME, from the downward API) or per local process (KUBERL_AGENT_ID,
    # set by `kuberl run`); the pid alone is 1 in every container.
    agent_id = os.environ.get("KUBERL_AGENT_ID") or os.environ.get("POD_NAME") or f"agent-{os.getpid()}"
    log.info("rollout agent starting", job=cfg.job.name, agent=agent_id, engine=cfg.rollout.engine)
    serve_metrics()
    asyncio.run(RolloutAgent(cfg, agent_id).run())


if __name__ == "__main__":
    main()
