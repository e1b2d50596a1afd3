"""Run loggers the manifest selects (spec.observability): TensorBoard and Weights & Biases.

Each gets every step's row (`StepRow`) as the scalars of its metrics.jsonl object
(`observe.scalars`), at the row's step. They
write under the output directory (``tensorboard/``, ``wandb/``); in a cluster
`RunFileSync` copies both to ``<checkpoint uri>/run/`` so they outlive the pod.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from typing import Any, Protocol

from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.logs import get_logger
from kuberl.workloads.observe.scalars import histograms, scalars
from kuberl.workloads.observe.step_row import StepRow
from kuberl.workloads.observe.uploads import RunFileSync

log = get_logger(__name__)


class RunLogger(Protocol):
    def log(self, row: StepRow) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class TensorBoardLogger:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=10)

    def log(self, row: StepRow) -> None:
        flat = row.to_json()
        for name, value in scalars(flat).items():
            self.writer.add_scalar(name, value, global_step=row.step, walltime=row.time)
        for name, values in histograms(flat).items():
            self.writer.add_histogram(name, np.asarray(values), global_step=row.step, walltime=row.time)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_run_id(namespace: str, name: str, uid: str | None) -> str:
    """One W&B run per job, the same across trainer restarts (they resume it)."""
    raw = uid or f"{namespace}-{name}"
    return re.sub(r"[^a-zA-Z0-9_-]", "-", raw)[:64]


class WandbLogger:
    def __init__(self, cfg: WorkloadConfig, out_dir: Path):
        import wandb

        spec = cfg.observability.wandb
        if spec.mode == "online" and not os.environ.get("WANDB_API_KEY"):
            raise RuntimeError("observability.wandb.mode is online but WANDB_API_KEY is not set: in a cluster it comes "
                               "from "
                               "observability.wandb.apiKeySecret; under kuberl run, export it (or use mode: offline)")
        self._wandb = wandb
        self.run = wandb.init(
            project=spec.project, entity=spec.entity, mode=spec.mode, dir=str(out_dir), name=cfg.job.name,
            id=wandb_run_id(cfg.job.namespace, cfg.job.name, cfg.job.uid), resume="allow", group=spec.group,
            tags=spec.tags,
            config={"mode": cfg.mode, "model": cfg.model.to_wire(), "algorithm": cfg.algorithm.to_wire(),
                    "run_policy": cfg.run_policy.to_wire(), "max_off_policy_steps": cfg.max_off_policy_steps},
            # base_url here, not through the environment: a local run has no pod env to set it.
            settings=wandb.Settings(console="off", silent=True,
                                    **({"base_url": spec.base_url} if spec.base_url else {})),
        )

    def log(self, row: StepRow) -> None:
        flat = row.to_json()
        data: dict[str, Any] = dict(scalars(flat))
        for name, values in histograms(flat).items():
            data[name] = self._wandb.Histogram(values)
        self.run.log(data, step=row.step)

    def flush(self) -> None:
        pass  # the W&B service writes (and, online, streams) as it goes

    def close(self) -> None:
        self.run.finish()


class RunLoggers:
    """The selected loggers behind one call each; a failing logger is logged once and dropped,
    never the cause of a failed training step."""

    def __init__(self, loggers: list[RunLogger], sync: RunFileSync | None = None):
        self.loggers, self.sync = loggers, sync

    @classmethod
    def open(cls, cfg: WorkloadConfig) -> RunLoggers:
        out = Path(cfg.output_dir)
        obs = cfg.observability
        loggers: list[RunLogger] = []
        if obs.tensorboard.enabled:
            loggers.append(TensorBoardLogger(out / "tensorboard"))
        if obs.wandb is not None:
            loggers.append(WandbLogger(cfg, out))  # a bad key or project fails the start, loudly
        sync = None
        if cfg.run_files_uri and loggers:
            sync = RunFileSync(cfg.run_files_uri, out, ("tensorboard", "wandb"), cfg.weight_store.endpoint,
                               cfg.weight_store.region)
        return cls(loggers, sync)

    def _each(self, what: str, *args) -> None:
        for logger in list(self.loggers):
            try:
                getattr(logger, what)(*args)
            except Exception as e:  # noqa: BLE001
                log.error("run logger failed; it is switched off for the rest of the run", logger=type(logger).__name__,
                          action=what, error=repr(e))
                self.loggers.remove(logger)

    def log(self, row: StepRow) -> None:
        self._each("log", row)

    def flush(self) -> None:
        self._each("flush")
        if self.sync is not None:
            self.sync.sync()

    def close(self) -> None:
        self._each("close")
        if self.sync is not None:
            self.sync.sync()
