"""Where the decoupled trainer's rounds come from: prompts fed to the rollout agents,
trajectories fetched from the buffer, stale ones dropped, groups assembled until a rollout
batch is ready. The loop that trains on them is trainer.decoupled."""

from __future__ import annotations

import os
import time
from dataclasses import asdict

from kuberl.workloads.buffer.records import Prompt, Trajectory
from kuberl.workloads.buffer.staleness import staleness_rule, staleness_weight
from kuberl.workloads.observe.step_row import StepRow, share_round
from kuberl.workloads.trainer.feeder import PromptFeeder
from kuberl.workloads.trainer.groups import GroupAssembler, in_flight_target
from kuberl.workloads.trainer.trainer import Trainer

# How long an issued prompt may go unanswered before it is issued again.
PROMPT_REISSUE_S = float(os.environ.get("KUBERL_PROMPT_REISSUE_S", "60"))
FETCH_BATCH = 256
FETCH_WAIT_S = 0.2


class Rounds:
    """The decoupled trainer's side of the buffer, one call per stage of the loop."""

    def __init__(self, tr: Trainer, consumer, extra: dict):
        cfg = tr.cfg
        self.tr, self.cfg, self.consumer = tr, cfg, consumer
        self.ledger = tr.ledger
        # Only prompts in the feeder's set are wanted (`PromptFeeder.__contains__`): that, not a
        # remembered answered-set, keeps a group from being trained twice across restarts.
        self.assembler = GroupAssembler(cfg.algorithm.dynamic_sampling)
        self.feeder = PromptFeeder(tr.buffer, cfg.buffer.max_in_flight_prompts, reissue_after_s=PROMPT_REISSUE_S)
        self.feeder.restore(Prompt(**raw) for raw in extra.get("in_flight", []))
        if extra.get("consumer"):
            consumer.load_state_dict(extra["consumer"])
        self.rule = staleness_rule(cfg.algorithm.off_policy_correction.staleness)
        self.unacked: list = []  # fetched batches, acked once the step that used them is committed
        self.stale_dropped = 0
        self._rollbacks_recorded = 0
        self.waiting_since = time.monotonic()  # the trainer waits for trajectories from here to its next step

    async def feed(self) -> None:
        """Issue prompts up to the in-flight target; re-issue overdue ones, and all of them when
        the broker went back in time."""
        tr, feeder = self.tr, self.feeder
        stage = tr.progress.curriculum.stage
        target = in_flight_target(self.cfg, tr.prompts.group_size(stage), self.assembler.keep_rate)
        # Groups assembled but not yet trained count against the budget too: they age as well.
        want = target - len(feeder) - len(self.assembler.ready)
        if want > 0 and (issued := await feeder.feed(tr.prompts.take(want, stage))):
            self.ledger.record("issued", prompts=[p.prompt_id for p in issued])
        for again in (await feeder.reissue_overdue(), await feeder.check_broker()):
            if again:
                self.ledger.record("issued", prompts=[p.prompt_id for p in again], reissue=True)
        if feeder.rollbacks > self._rollbacks_recorded:
            self._rollbacks_recorded = feeder.rollbacks
            self.ledger.record("broker_rollback")
            await tr.reassert_state()

    async def fetch(self) -> None:
        """Take what the agents wrote; each trajectory goes to its group, or is dropped."""
        batch = await self.consumer.fetch(FETCH_BATCH, current_version=self.tr.progress.version, timeout=FETCH_WAIT_S)
        self.unacked.append(batch)  # includes duplicates and stale samples: done with at the next ack
        orphans = sum(self._route(t) for t in batch.trajectories)
        if orphans:
            self.ledger.record("orphans", count=orphans)
        self.drop_stale()

    def _route(self, t: Trajectory) -> bool:
        """Into the assembler, or dropped; True for an orphan (a prompt no longer wanted)."""
        stale = staleness_weight(t.policy_version, self.tr.progress.version, self.cfg.max_off_policy_steps,
                                 **self.rule) is None
        self.stale_dropped += stale
        if t.prompt_id not in self.feeder:
            # Answered already, or issued by a trainer that crashed before its checkpoint
            # (its prompt counter was rolled back: the same problems are issued again).
            return not stale
        if stale:
            # The prompt's group is lost for training: out of the feeder's set, so a fresh
            # prompt takes its slot and its later samples are ignored as orphans.
            self.feeder.complete(t.prompt_id, trainable=False)
            self.ledger.record("dropped", prompt=t.prompt_id, why="stale")
            return False
        done = self.assembler.add(t)
        if done is not None:
            self.feeder.complete(done, trainable=not self.assembler.last_dropped)
            if self.assembler.last_dropped:
                self.ledger.record("dropped", prompt=done, why="no_signal")
        return False

    def drop_stale(self) -> None:
        """Assembled groups that aged past the bound while waiting are dropped whole."""
        for group in self.assembler.drop_untrainable(self.tr.progress.version, self.cfg.max_off_policy_steps,
                                                     self.rule):
            self.stale_dropped += len(group)
            self.feeder.settle([group[0].prompt_id])
            self.ledger.record("dropped", prompt=group[0].prompt_id, why="stale")

    def ready(self) -> bool:
        return self.assembler.ready_samples() >= self.cfg.algorithm.rollout_batch_size

    def assemble(self) -> tuple[list[list[Trajectory]], float]:
        """The rollout batch to train on, and how long the trainer waited for it."""
        return self.assembler.take(self.cfg.algorithm.rollout_batch_size), time.monotonic() - self.waiting_since

    def trained(self, groups: list[list[Trajectory]], rows: list[StepRow]) -> None:
        """The round's groups are done with: a ledger record per step, the groups with its last."""
        prompts = [g[0].prompt_id for g in groups]
        self.feeder.settle(prompts)
        for row in rows:
            self.ledger.record("step", step=row.step, prompts=prompts if row is rows[-1] else [],
                               reward_mean=row.reward_mean)

    def annotate(self, rows: list[StepRow], waited: float, busy: float, sync_s: float) -> None:
        """What the round measured, on each of its steps' rows."""
        for row in rows:
            row.stale_dropped, row.in_flight = self.stale_dropped, len(self.feeder)
            row.trainer_idle_percent = round(100.0 * waited / max(waited + busy, 1e-9), 2)
        share_round(rows, time_wait_s=waited, time_weight_sync_s=sync_s)

    def checkpoint_state(self) -> dict:
        return {"consumer": self.consumer.state_dict(), "in_flight": [asdict(p) for p in self.feeder.snapshot()]}

    async def ack(self) -> None:
        """Ack only after the step (and its checkpoint) are committed: a crash before redelivers."""
        for batch in self.unacked:
            await batch.ack()
        self.unacked = []
        self.waiting_since = time.monotonic()
