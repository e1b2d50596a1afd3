"""How `kuberl run` shows progress: a redrawn bar at a terminal, a log line every few seconds elsewhere.

Under ``kuberl run … > log`` (CI, nohup, a pod) a redrawn bar writes a carriage-return
frame per update into the file; a structured line every ``KUBERL_PROGRESS_INTERVAL_S``
seconds (default 5; JSON under ``KUBERL_LOG_FORMAT=json`` or whenever stderr is not a
terminal) reads well there and greps well.
"""

from __future__ import annotations

import os
import time
from kuberl.workloads.observe.step_row import StepRow

INTERVAL_ENV = "KUBERL_PROGRESS_INTERVAL_S"


class ProgressReport:
    def __init__(self, job: str, max_steps: int, *, interactive: bool, interval_s: float | None = None):
        self.job, self.max_steps, self.interactive = job, max_steps, interactive
        self.interval_s = float(os.environ.get(INTERVAL_ENV, "5")) if interval_s is None else interval_s
        self._bar = None
        self._log = None
        self._last_line = float("-inf")
        self._last_row: StepRow | None = None
        self._printed: StepRow | None = None
        self._t0 = time.monotonic()
        if interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=max_steps, desc=job, unit="step", dynamic_ncols=True)
        else:
            from kuberl.workloads.logs import get_logger

            self._log = get_logger("kuberl.run")

    def show(self, row: StepRow) -> None:
        """The newest metrics row; the bar moves, a line is written when one is due."""
        self._last_row = row
        if self._bar is not None:
            self._bar.update(row.step - self._bar.n)
            self._bar.set_postfix(reward=f"{row.reward_mean:.3f}", samples_s=f"{row.samples_per_s:.1f}",
                                  version=row.policy_version, stage=row.stage_name or None)
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval_s:
            self._line(row)
            self._last_line = now
            self._printed = row

    def _line(self, row: StepRow) -> None:
        elapsed = time.monotonic() - self._t0
        rate = row.step / elapsed if elapsed > 0 else 0.0
        eta = int((self.max_steps - row.step) / rate) if rate > 0 else None
        self._log.info("progress", job=self.job, step=row.step, max_steps=self.max_steps,
                       percent=round(100.0 * row.step / max(self.max_steps, 1), 1), reward=row.reward_mean,
                       samples_per_s=row.samples_per_s, policy_version=row.policy_version,
                       stage=row.stage_name or None, elapsed_s=round(elapsed, 1), eta_s=eta)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._last_row is not None and self._last_row is not self._printed:
            self._line(self._last_row)  # the final state, whenever the last line was
