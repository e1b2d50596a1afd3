"""What both modes share: the policy backend, tokenizer, checkpoints, metrics and job-state reports."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from kuberl.workloads.buffer.admin import BufferConfig
from kuberl.workloads.buffer.records import Trajectory
from kuberl.workloads.buffer.staleness import staleness_rule
from kuberl.workloads.buffer.state import JobMetrics
from kuberl.workloads.buffer.stream import JobBuffer
from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.engines.batching import BatchingEngine
from kuberl.workloads.engines.torch_engine import TorchEngine
from kuberl.workloads.logs import get_logger
from kuberl.workloads.observe.run_loggers import RunLoggers
from kuberl.workloads.observe.step_row import StepRow
from kuberl.workloads.observe.uploads import RunFiles
from kuberl.workloads.observe.trainer_metrics import TrainerMetrics
from kuberl.workloads.policy.backend import PublishRequest, TrainerBackend, make_backend
from kuberl.workloads.policy.job_model import job_model_dir, job_tokenizer
from kuberl.workloads.policy.tiny.model import TinyConfig, TinyQwen2ForCausalLM
from kuberl.workloads.rl.batch import collate
from kuberl.workloads.rl.curriculum import CurriculumState, curriculum_step
from kuberl.workloads.trainer.checkpoints import CheckpointStore
from kuberl.workloads.trainer.evaluation import Evaluator
from kuberl.workloads.trainer.groups import staleness_weights
from kuberl.workloads.trainer.ledger import Ledger
from kuberl.workloads.trainer.prompts import PromptSource, curriculum_stages
from kuberl.workloads.trainer.warm_start import WARMUP_LR, warmup_batches
from kuberl.workloads.weights.outage import through_outage
from kuberl.workloads.weights.sync import Published, weight_store

log = get_logger(__name__)


@dataclass
class Progress:
    step: int = 0
    version: int = 0
    samples_trained: int = 0
    tokens_trained: int = 0
    infra_failed: int = 0  # samples masked because they could not be scored (Trajectory.failure)
    rl_seconds: float = 0.0  # wall time spent in RL so far, across restarts
    curriculum: CurriculumState = field(default_factory=CurriculumState)
    resumed_from: int | None = None


class MetricsLog:
    def __init__(self, output_dir: str):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(output_dir) / "metrics.jsonl"

    def write(self, row: StepRow) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row.to_json()) + "\n")


def stats(values: list[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


class Trainer:
    """Shared by both modes: the backend (``trainer.backend``), checkpoints, metrics, KV progress."""

    def __init__(self, cfg: WorkloadConfig):
        self.cfg = cfg
        self.algo = cfg.algorithm
        self.seed = cfg.run_policy.seed
        torch.manual_seed(self.seed)
        model_dir = job_model_dir(cfg)
        self.tokenizer = job_tokenizer(cfg)
        self.backend: TrainerBackend = make_backend(cfg, model_dir)
        self.prompts = PromptSource(cfg, self.tokenizer, seed=self.seed)
        self.evaluator = Evaluator(cfg, self.tokenizer)
        self.last_evaluation: dict | None = None
        self.stages = curriculum_stages(cfg)
        self.progress = Progress()
        self.ckpt = CheckpointStore(cfg.checkpoint.uri, cfg.weight_store.endpoint, cfg.weight_store.region,
                                    cfg.checkpoint.keep)
        self.metrics = MetricsLog(cfg.output_dir)
        self.loggers = RunLoggers.open(cfg)
        self.prometheus = TrainerMetrics()
        self.store = weight_store(cfg)
        self.buffer: JobBuffer | None = None
        # In a cluster the ledger's segment is copied out with every checkpoint (the output
        # directory is the pod's emptyDir); under kuberl run it is in the run's directory already.
        mirror = RunFiles(cfg.run_files_uri, cfg.weight_store.endpoint,
                          cfg.weight_store.region) if cfg.run_files_uri else None
        self.ledger = Ledger(cfg.output_dir, self.prompts.incarnation, mirror)
        self.last_published: Published | None = None
        # The version published last stays here (weightStore.fullVersionEvery > 1): the next
        # is stored as deltas against it. On /tmp, the pod's emptyDir; gone with a restart,
        # after which the first version published is whole.
        self.published_dir = (
            Path(tempfile.mkdtemp(prefix="kuberl-published-")) if cfg.weight_store.full_version_every > 1 else None
        )
        self._rl_t0 = time.monotonic()

    # ---- lifecycle --------------------------------------------------------------------

    def restore_or_init(self, extra_state: dict | None = None) -> dict:
        """Resume from the latest checkpoint, or warm-start a fresh model; returns the checkpoint's extras."""
        state = through_outage(self.ckpt.load_latest, "checkpoint read")
        if state is None:
            self.init_fresh()
            return {}
        if self.algo.kl_coef > 0 and "reference" not in state:
            raise ValueError("algorithm.klCoef > 0 but the checkpoint holds no reference policy "
                             "(it was written with klCoef 0); start the job afresh to use a KL term")
        self.backend.load_checkpoint_state(state, keep_reference=self.algo.kl_coef > 0)
        p = state["progress"]
        self.progress = Progress(step=p["step"], version=p["version"], samples_trained=p["samples_trained"],
                                 tokens_trained=p.get("tokens_trained", 0), infra_failed=p.get("infra_failed", 0),
                                 rl_seconds=p["rl_seconds"], curriculum=CurriculumState(
                                     p["curriculum"]["stage"], p["curriculum"]["stage_start_step"],
                                     tuple(p["curriculum"]["recent_pass_rates"])),
                                 resumed_from=p["step"])
        self.prompts.issued = state["prompts_issued"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from checkpoint", step=self.progress.step, version=self.progress.version)
        return state.get("extra", {})

    def init_fresh(self) -> None:
        """A job's first start: the warm start, a fresh optimizer, and the reference policy
        (the policy RL starts from, after the warm start, is the one the KL term keeps close to)."""
        steps = self.cfg.model.warmup_sft_steps
        if steps:
            t0 = time.monotonic()
            # The format of every stage's answers.
            batches = warmup_batches(self.prompts.problems, self.tokenizer, steps, seed=self.seed)
            loss = self.backend.warm_start(batches, WARMUP_LR)
            log.info("warm start done", steps=steps, loss=round(loss, 3), seconds=round(time.monotonic() - t0, 2))
        self.backend.fresh_start(keep_reference=self.algo.kl_coef > 0)

    def checkpoint(self, extra: dict | None = None) -> None:
        p = self.progress
        state = {
            **self.backend.checkpoint_state(),
            "progress": {**asdict(replace(p, resumed_from=None)), "rl_seconds": self.rl_seconds()},
            "prompts_issued": self.prompts.issued,
            "torch_rng": torch.get_rng_state(),
            "extra": extra or {},
        }
        # The ledger first: a checkpoint in the store whose lead-up is not is what the audit
        # could not tell from lost steps; the other way round, a restart rolls it back.
        self.mirror_ledger()
        through_outage(lambda: self.ckpt.save(p.step, state), f"checkpoint of step {p.step}")
        self.ledger.record("checkpoint", step=p.step)
        self.loggers.flush()  # event files reach the run-files location with each checkpoint

    def mirror_ledger(self) -> None:
        """The ledger's segment to the run-files location, retried through a store outage."""
        through_outage(self.ledger.mirror, "ledger copy")

    def rl_seconds(self) -> float:
        return self.progress.rl_seconds + (time.monotonic() - self._rl_t0)

    async def open_buffer(self) -> None:
        self.buffer = await JobBuffer.open(self.cfg.buffer.url, self.cfg.job.namespace, self.cfg.job.name,
                                           BufferConfig.from_spec(self.cfg.buffer))

    # ---- one step ---------------------------------------------------------------------

    def train(self, groups: list[list[Trajectory]]) -> list[StepRow]:
        """One rollout batch → its optimizer steps (the backend's `ppo_update`); one row per step.

        Each sample's staleness weight is decided here, against the version the batch is
        trained from, so it always reaches the loss of the sample it belongs to.
        """
        t0 = time.monotonic()
        p = self.progress
        start_version = p.version
        trajs = [t for g in groups for t in g]
        weights = staleness_weights(trajs, start_version, self.cfg.max_off_policy_steps,
                                    staleness_rule(self.algo.off_policy_correction.staleness))
        batch = collate(groups, weights, scale_by_std=self.algo.advantage_scaling == "groupStd",
                        pad_id=self.tokenizer.pad_id)
        lags = [start_version - t.policy_version for t in trajs]
        lengths = [int(t.loss_mask.sum()) for t in trajs]  # generated tokens (tool outputs are not trained)
        failed = [t.failure is not None for t in trajs]
        rows = []
        for result in self.backend.ppo_update(batch, self.algo, self.cfg.run_policy.max_steps - p.step):
            p.step += 1
            p.version += 1
            step_failed = failed[result.samples]
            p.samples_trained += len(step_failed)
            p.infra_failed += sum(step_failed)
            # Reward statistics are over the samples that were scored: a failure has no reward.
            rewards = [r for r, f in zip(batch.rewards[result.samples].tolist(), step_failed, strict=True) if not f]
            pass_rate = sum(1 for r in rewards if r >= 1.0) / max(len(rewards), 1)
            before = p.curriculum.stage
            p.curriculum = curriculum_step(self.stages, p.curriculum, p.step, pass_rate)
            if p.curriculum.stage != before:
                log.info("curriculum stage switch", step=p.step, stage=self.stages[p.curriculum.stage].name)
            mean, std = stats(rewards)
            elapsed = self.rl_seconds()
            step_lags = lags[result.samples]
            step_lengths = lengths[result.samples]
            p.tokens_trained += sum(step_lengths)
            rows.append(StepRow(
                step=p.step, policy_version=p.version, reward_mean=round(mean, 4), reward_std=round(std, 4),
                pass_rate=round(pass_rate, 4), samples=len(step_failed), samples_trained=p.samples_trained,
                infra_failed=sum(step_failed), infra_failed_total=p.infra_failed,
                samples_per_s=round(p.samples_trained / max(elapsed, 1e-9), 3), elapsed_s=round(elapsed, 2),
                train_s=round(time.monotonic() - t0, 4), stage=p.curriculum.stage,
                stage_name=self.stages[p.curriculum.stage].name,
                tokens=sum(step_lengths), tokens_per_s=round(p.tokens_trained / max(elapsed, 1e-9), 3),
                response_length_mean=round(sum(step_lengths) / len(step_lengths), 3),
                response_length_max=max(step_lengths),
                staleness_mean=round(sum(step_lags) / len(step_lags), 3), staleness_max=max(step_lags),
                staleness_counts={str(lag): n for lag, n in sorted(Counter(step_lags).items())},
                epoch=result.epoch, mini_batch=result.mini_batch, mode=self.cfg.mode, resumed_from=p.resumed_from,
                time=time.time(), policy={k: round(v, 5) for k, v in result.metrics.items()},
            ))
            t0 = time.monotonic()
        return rows

    def crossed(self, step_before: int, interval: int) -> bool:
        """Whether a multiple of ``interval`` (or the last step) lies in (step_before, step]."""
        step = self.progress.step
        return step > step_before and (
            step // interval > step_before // interval or step >= self.cfg.run_policy.max_steps
        )

    async def evaluate(self, engine: BatchingEngine, session=None) -> dict[str, float]:
        """Run the job's evaluation on ``engine`` (holding the current policy); kept for status."""
        t0 = time.monotonic()
        scores = await self.evaluator.run(engine, session)
        self.last_evaluation = {"step": self.progress.step, "policy_version": self.progress.version, "metrics": scores}
        log.info("evaluation", step=self.progress.step, seconds=round(time.monotonic() - t0, 2), **scores)
        return {**scores, "eval_step": self.progress.step, "time_eval_s": round(time.monotonic() - t0, 4)}

    def engine_model(self) -> TinyQwen2ForCausalLM:
        """The current weights in the in-process engine's model (the job's architecture):
        built from the backend's config, not read from disk, as its weights are replaced at once."""
        model = TinyQwen2ForCausalLM(TinyConfig.from_hf(self.backend.hf_config))
        model.load_state_dict(self.backend.hf_state())
        return model

    def evaluation_engine(self) -> BatchingEngine:
        """An in-process engine on a copy of the current weights (decoupled mode: the rollout
        pool's engines keep generating training data meanwhile)."""
        return BatchingEngine(TorchEngine(self.engine_model(), version=self.progress.version, seed=self.seed))

    async def report(self, row: StepRow) -> None:
        """One step's row: to metrics.jsonl, the run loggers and Prometheus, and its headline
        numbers into the job state."""
        self.metrics.write(row)
        self.loggers.log(row)
        self.prometheus.observe_row(row)
        if self.buffer is not None:
            # Absolute values from the trainer's own (checkpointed) progress, and the version it
            # published last: a broker that lost writes gets the state back at the next step.
            published = self.last_published
            await self.buffer.state.update(lambda s: replace(
                s, curriculum_stage=row.stage,
                **({"policy_version": published.version, "weights_manifest": published.uri}
                   if published is not None and published.version > s.policy_version else {}),
                counters={**s.counters, "steps": row.step, "samples": row.samples_trained,
                          "infra_failed": row.infra_failed_total},
                metrics=JobMetrics(reward_mean=row.reward_mean, reward_std=row.reward_std, pass_rate=row.pass_rate,
                                   samples_per_s=row.samples_per_s, trainer_idle_percent=row.trainer_idle_percent),
                evaluation=self.last_evaluation or s.evaluation))
        log.info("step", step=row.step, reward_mean=row.reward_mean, samples_per_s=row.samples_per_s,
                 policy_version=row.policy_version, stage=row.stage)

    async def reassert_state(self) -> None:
        """Write the version published last back into the job state (the broker lost it)."""
        if self.buffer is not None and self.last_published is not None:
            await self.buffer.state.publish_version(self.last_published.version, self.last_published.uri)

    def publish(self) -> Published:
        """Publish the current weights as the current version (retried through an S3 outage):
        the backend's way, whole from this process or in parts from the gang."""
        version, store_spec = self.progress.version, self.cfg.weight_store
        published = self.backend.publish(PublishRequest(version, self.cfg.model.dtype, store_spec.fp8,
                                                        store_spec.full_version_every,
                                                        self.last_published, self.published_dir))
        self.prometheus.weight_sync(published.seconds, published.bytes, published.stored_bytes, published.stages)
        entry = self.ledger.record("published", version=version, digest=published.digest, parent=published.parent,
                                   bytes=published.bytes, stored_bytes=published.stored_bytes,
                                   seconds=round(published.seconds, 3), stages=published.stages)
        # Out before the version is announced: an agent may load it and this process die
        # before the segment's next copy.
        through_outage(lambda: self.ledger.mirror_published(entry), f"ledger record of version {version}")
        self.last_published = published
        return published

    async def sync_weights(self) -> Published:
        """Publish the current weights, announce them in the job state, prune old versions."""
        published = await asyncio.to_thread(self.publish)
        await self.buffer.state.publish_version(self.progress.version, published.uri)
        await asyncio.to_thread(self.prune_versions)
        return published

    async def after_round(self, rows: list[StepRow], step_before: int, evaluate: Callable[[], Awaitable[dict]],
                          checkpoint_state: Callable[[], dict] | None = None) -> float:
        """What follows a round's steps, in one order for both modes, each when its interval
        was crossed (or the job ends): publish the weights (weightStore.syncIntervalSteps,
        keepVersions), evaluate (evaluation.intervalSteps), checkpoint (checkpoint.intervalSteps).
        Returns the seconds the weight sync took."""
        cfg, sync_s = self.cfg, 0.0
        if self.crossed(step_before, cfg.weight_store.sync_interval_steps):
            published = await self.sync_weights()
            sync_s, rows[-1].weight_sync_bytes = published.seconds, published.bytes
        if self.evaluator.enabled and self.crossed(step_before, cfg.evaluation.interval_steps):
            rows[-1].add_evaluation(await evaluate())
        if self.crossed(step_before, cfg.checkpoint.interval_steps):
            await asyncio.to_thread(self.checkpoint, checkpoint_state() if checkpoint_state else None)
        return sync_s

    def prune_versions(self) -> None:
        """Delete weight versions beyond ``weightStore.keepVersions``. Housekeeping: a store that
        is away now is pruned at the next sync, never a reason to stop training."""
        try:
            self.store.prune(self.cfg.weight_store.keep_versions)
        except Exception as e:  # noqa: BLE001
            log.warning("weight versions not pruned; retried at the next sync", error=str(e)[:200])

    def close(self) -> None:
        """End of the trainer process: the run loggers finish (and copy their files out), and
        so does the ledger's segment, once (an end on a failure must not wait on the store)."""
        self.loggers.close()
        try:
            self.ledger.mirror()
        except Exception as e:  # noqa: BLE001
            log.warning("ledger segment not copied at exit", error=str(e)[:200])
        if self.published_dir is not None:
            shutil.rmtree(self.published_dir, ignore_errors=True)

