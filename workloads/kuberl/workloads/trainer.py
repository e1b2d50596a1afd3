"""The trainer process: `python -m kuberl.workloads.trainer`.

Decoupled mode: feed prompts to the prompts stream (curriculum-aware, bounded in flight,
overdue ones re-issued), consume trajectories, assemble whole groups, step, publish
weights and the new version, checkpoint, ack. Colocated mode: the engine lives in this
process — generate a batch, train on it, copy the new weights into the engine, repeat.

Both modes write one JSON line per step to ``<outputDir>/metrics.jsonl`` and progress to
the job KV (key ``progress``), resume from the latest checkpoint when restarted, and exit 0
once ``runPolicy.maxSteps`` optimizer steps are done.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import aiohttp
import torch

from kuberl.workloads import algorithms
from kuberl.workloads.buffer import BufferConfig, InFlight, JobBuffer, Prompt, Trajectory, staleness_weight
from kuberl.workloads.checkpoints import CheckpointStore
from kuberl.workloads.config import WorkloadConfig, load_config
from kuberl.workloads.engines import TorchEngine
from kuberl.workloads.episodes import BatchingEngine, SamplingSettings, run_group
from kuberl.workloads.logs import get_logger
from kuberl.workloads.models import TinyQwen2ForCausalLM
from kuberl.workloads.policy import TrainBatch, initial_model, make_optimizer, rl_step, warm_start
from kuberl.workloads.tasks import Problem, filter_problems, load_dataset
from kuberl.workloads.weightsync import publish_policy, weight_store

log = get_logger(__name__)

PROMPT_REISSUE_S = float(os.environ.get("KUBERL_PROMPT_REISSUE_S", "60"))
PROMPT_ACK_WAIT_S = 30.0  # a dead agent's leased prompts come back this soon (agents keep theirs alive)


def buffer_config(cfg: WorkloadConfig) -> BufferConfig:
    """The one BufferConfig every process of a job uses (consumers must agree on it)."""
    return BufferConfig(max_in_flight_prompts=cfg.buffer.max_in_flight_prompts, prompt_ack_wait_s=PROMPT_ACK_WAIT_S,
                        trajectory_ack_wait_s=120.0)


# ---------------------------------------------------------------------------------------
# Prompts and curriculum


def curriculum_stages(cfg: WorkloadConfig) -> list[algorithms.Stage]:
    if cfg.curriculum is None:
        return [algorithms.Stage(name="all")]
    return [algorithms.Stage.from_spec(s) for s in cfg.curriculum.stages]


@dataclass
class PromptSource:
    """Problems of the current curriculum stage, handed out in a shuffled cycle."""

    cfg: WorkloadConfig
    seed: int = 0
    issued: int = 0

    def __post_init__(self) -> None:
        self.incarnation = uuid.uuid4().hex[:6]
        self.problems: list[Problem] = [p for ds in self.cfg.datasets for p in load_dataset(ds)]
        self._by_stage: dict[int, list[Problem]] = {}

    def stage_problems(self, stage: int) -> list[Problem]:
        if stage not in self._by_stage:
            chosen = self.problems
            if self.cfg.curriculum is not None:
                spec = self.cfg.curriculum.stages[stage]
                rng = spec.difficulty
                chosen = filter_problems(self.problems, spec.datasets, rng.min if rng else None, rng.max if rng else None)
            if not chosen:
                raise ValueError(f"curriculum stage {stage} selects no problems")
            self._by_stage[stage] = chosen
        return self._by_stage[stage]

    def group_size(self, stage: int) -> int:
        if self.cfg.curriculum is not None and self.cfg.curriculum.stages[stage].samples_per_prompt:
            return self.cfg.curriculum.stages[stage].samples_per_prompt
        return self.cfg.algorithm.group_size

    def sampling(self, stage: int) -> SamplingSettings:
        length = self.cfg.algorithm.max_response_length
        if self.cfg.curriculum is not None and self.cfg.curriculum.stages[stage].max_response_length:
            length = self.cfg.curriculum.stages[stage].max_response_length
        return SamplingSettings(length, self.cfg.algorithm.temperature)

    def take(self, n: int, stage: int) -> list[Prompt]:
        pool = self.stage_problems(stage)
        out = []
        for _ in range(n):
            cycle, pos = divmod(self.issued, len(pool))
            order = list(range(len(pool)))
            random.Random(f"{self.seed}/{stage}/{cycle}").shuffle(order)
            p = pool[order[pos]]
            # The issue counter makes each prompt instance unique (the same problem recurs); the
            # incarnation tag keeps a restarted trainer, whose counter resumes from its checkpoint,
            # from re-using ids the crashed one already published: the prompts stream would drop
            # them as duplicates (Nats-Msg-Id window) and the feeder would wait for the re-issue.
            out.append(Prompt(f"{p.prompt_id}@{self.incarnation}.{self.issued}", p.to_data(),
                              n_samples=self.group_size(stage), stage=stage))
            self.issued += 1
        return out


# ---------------------------------------------------------------------------------------
# State that survives restarts


@dataclass
class Progress:
    step: int = 0
    version: int = 0
    samples_trained: int = 0
    rl_seconds: float = 0.0  # wall time spent in RL so far, across restarts
    curriculum: algorithms.CurriculumState = field(default_factory=algorithms.CurriculumState)
    resumed_from: int | None = None


class MetricsLog:
    def __init__(self, output_dir: str):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(output_dir) / "metrics.jsonl"

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def stats(values: list[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


class Trainer:
    """Shared by both modes: the model, optimizer, checkpoints, metrics, KV progress."""

    def __init__(self, cfg: WorkloadConfig):
        self.cfg = cfg
        self.algo = cfg.algorithm
        self.model: TinyQwen2ForCausalLM = initial_model(cfg.model, seed=0)
        self.opt = make_optimizer(self.model, self.algo)
        self.prompts = PromptSource(cfg)
        self.stages = curriculum_stages(cfg)
        self.progress = Progress()
        self.ckpt = CheckpointStore(cfg.checkpoint.uri, cfg.weight_store.endpoint, cfg.weight_store.region, cfg.checkpoint.keep)
        self.metrics = MetricsLog(cfg.output_dir)
        self.store = weight_store(cfg)
        self.buffer: JobBuffer | None = None
        self._kv = None
        self._rl_t0 = time.monotonic()

    # ---- lifecycle --------------------------------------------------------------------

    def restore_or_init(self, extra_state: dict | None = None) -> dict:
        """Resume from the latest checkpoint, or warm-start a fresh model; returns the checkpoint's extras."""
        state = self.ckpt.load_latest()
        if state is None:
            steps = self.cfg.model.warmup_sft_steps
            if steps:
                t0 = time.monotonic()
                loss = warm_start(self.model, self.prompts.problems, steps)  # format of every stage's answers
                log.info("warm start done", steps=steps, loss=round(loss, 3), seconds=round(time.monotonic() - t0, 2))
            self.opt = make_optimizer(self.model, self.algo)
            return {}
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        p = state["progress"]
        self.progress = Progress(step=p["step"], version=p["version"], samples_trained=p["samples_trained"],
                                 rl_seconds=p["rl_seconds"], curriculum=algorithms.CurriculumState(
                                     p["curriculum"]["stage"], p["curriculum"]["stage_start_step"],
                                     tuple(p["curriculum"]["recent_pass_rates"])),
                                 resumed_from=p["step"])
        self.prompts.issued = state["prompts_issued"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from checkpoint", step=self.progress.step, version=self.progress.version)
        return state.get("extra", {})

    def checkpoint(self, extra: dict | None = None) -> None:
        p = self.progress
        self.ckpt.save(p.step, {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "progress": {**asdict(replace(p, resumed_from=None)), "rl_seconds": self.rl_seconds()},
            "prompts_issued": self.prompts.issued,
            "torch_rng": torch.get_rng_state(),
            "extra": extra or {},
        })

    def rl_seconds(self) -> float:
        return self.progress.rl_seconds + (time.monotonic() - self._rl_t0)

    async def open_buffer(self) -> None:
        self.buffer = await JobBuffer.open(self.cfg.buffer.url, self.cfg.job.namespace, self.cfg.job.name, buffer_config(self.cfg))
        self._kv = await self.buffer.js.key_value(self.buffer.names.kv_bucket)

    # ---- one step ---------------------------------------------------------------------

    def train_on(self, groups: list[list[Trajectory]], weights: dict[str, float]) -> dict:
        t0 = time.monotonic()
        batch = TrainBatch.collate(groups, weights)
        metrics = rl_step(self.model, self.opt, batch, self.algo)
        p = self.progress
        p.step += 1
        p.version += 1
        p.samples_trained += len(batch.rewards)
        rewards = batch.rewards.tolist()
        pass_rate = sum(1 for r in rewards if r >= 1.0) / len(rewards)
        before = p.curriculum.stage
        p.curriculum = algorithms.curriculum_step(self.stages, p.curriculum, p.step, pass_rate)
        if p.curriculum.stage != before:
            log.info("curriculum stage switch", step=p.step, stage=self.stages[p.curriculum.stage].name)
        mean, std = stats(rewards)
        elapsed = self.rl_seconds()
        lags = [p.version - 1 - g[0].policy_version for g in groups]
        return {
            "step": p.step, "policy_version": p.version, "reward_mean": round(mean, 4), "reward_std": round(std, 4),
            "pass_rate": round(pass_rate, 4), "samples": len(rewards), "samples_trained": p.samples_trained,
            "samples_per_s": round(p.samples_trained / max(elapsed, 1e-9), 3), "elapsed_s": round(elapsed, 2),
            "train_s": round(time.monotonic() - t0, 4), "stage": p.curriculum.stage, "stage_name": self.stages[p.curriculum.stage].name,
            "staleness_mean": round(sum(lags) / len(lags), 3), "mode": self.cfg.mode, "resumed_from": p.resumed_from,
            "time": time.time(), **{k: round(v, 5) for k, v in metrics.items()},
        }

    async def report(self, row: dict) -> None:
        self.metrics.write(row)
        if self._kv is not None:
            await self._kv.put("progress", json.dumps(row).encode())
            await self.buffer.state.update(lambda s: replace(s, curriculum_stage=row["stage"],
                                                             counters={**s.counters, "steps": row["step"], "samples": row["samples_trained"]}))
        log.info("step", **{k: row[k] for k in ("step", "reward_mean", "samples_per_s", "policy_version", "stage")})

    def publish(self) -> str:
        return publish_policy(self.store, self.model, self.progress.version, self.cfg.weight_store.fp8)

    def due(self, interval: int) -> bool:
        return self.progress.step % interval == 0 or self.progress.step >= self.cfg.run_policy.max_steps


# ---------------------------------------------------------------------------------------
# Colocated


async def run_colocated(cfg: WorkloadConfig) -> None:
    tr = Trainer(cfg)
    tr.restore_or_init()
    await tr.open_buffer()
    engine = TorchEngine(initial_model(cfg.model), version=tr.progress.version, seed=int(time.time()) % 2**31)
    engine.load_state_dict(tr.model.state_dict(), tr.progress.version)
    batcher = BatchingEngine(engine)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) if cfg.reward.type == "agentEnv" else None
    tr._rl_t0 = time.monotonic()
    try:
        while tr.progress.step < cfg.run_policy.max_steps:
            stage = tr.progress.curriculum.stage
            group = tr.prompts.group_size(stage)
            n_prompts = max(1, cfg.algorithm.rollout_batch_size // group)
            if cfg.algorithm.dynamic_sampling:
                n_prompts = math.ceil(n_prompts * cfg.algorithm.over_sampling_factor)
            prompts = tr.prompts.take(n_prompts, stage)
            # Generate the whole rollout batch (on-policy), then train on it.
            groups = await asyncio.gather(*(run_group(batcher, p, cfg.reward, tr.prompts.sampling(stage), session, cfg.agent_envs) for p in prompts))
            all_rewards = [t.reward for g in groups for t in g]
            if cfg.algorithm.dynamic_sampling:
                kept = [g for g in groups if algorithms.has_signal([t.reward for t in g])]
                groups = kept or groups[:1]
            per_step = max(1, cfg.algorithm.global_batch_size // group)
            for i in range(0, len(groups), per_step):
                if tr.progress.step >= cfg.run_policy.max_steps:
                    break
                row = tr.train_on(groups[i : i + per_step], {})
                row["rollout_reward_mean"] = round(stats(all_rewards)[0], 4)
                await tr.report(row)
                if tr.due(cfg.checkpoint.interval_steps):
                    await asyncio.to_thread(tr.checkpoint)
            # "Update engine weights in place": the trained tensors go straight into the engine.
            await batcher.swap({k: v.detach().clone() for k, v in tr.model.state_dict().items()}, tr.progress.version)
        manifest = await asyncio.to_thread(tr.publish)
        await tr.buffer.state.publish_version(tr.progress.version, manifest)
    finally:
        await batcher.stop()
        if session is not None:
            await session.close()
        if tr.buffer is not None:
            await tr.buffer.close()


# ---------------------------------------------------------------------------------------
# Decoupled


@dataclass
class GroupAssembler:
    """Samples → whole groups; tracks which prompts are answered (other attempts then ignored)."""

    dynamic_sampling: bool
    partial: dict[str, list[Trajectory]] = field(default_factory=dict)
    ready: list[list[Trajectory]] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    kept: int = 0
    dropped: int = 0

    def add(self, t: Trajectory) -> str | None:
        """Returns the prompt id when ``t`` completes its group."""
        if t.prompt_id in self.answered:
            return None
        group = self.partial.setdefault(t.group_id, [])
        if any(s.sample_id == t.sample_id for s in group):
            return None
        group.append(t)
        if len(group) < int(t.meta.get("group_size", 1)):
            return None
        del self.partial[t.group_id]
        self.answered.add(t.prompt_id)
        if self.dynamic_sampling and not algorithms.has_signal([s.reward for s in group]):
            self.dropped += 1
        else:
            self.kept += 1
            self.ready.append(group)
        return t.prompt_id

    def ready_samples(self) -> int:
        return sum(len(g) for g in self.ready)

    def drop_untrainable(self, current_version: int, max_off_policy_steps: int) -> int:
        """Evict ready groups that aged past the staleness bound while waiting; returns the samples dropped.

        Done before the batch is counted, so a step always trains a full batch of groups
        it can use (their prompts are answered already: the feeder replaces them).
        """
        keep = [g for g in self.ready
                if staleness_weight(min(t.policy_version for t in g), current_version, max_off_policy_steps) is not None]
        dropped = sum(len(g) for g in self.ready) - sum(len(g) for g in keep)
        self.ready = keep
        return dropped

    def take(self, max_samples: int) -> list[list[Trajectory]]:
        """Whole groups up to ``max_samples``, oldest policy version first: the groups closest
        to the staleness bound are trained now, fresher ones can still wait a step."""
        self.ready.sort(key=lambda g: min(t.policy_version for t in g))  # stable: arrival order within a version
        out, n = [], 0
        while self.ready and (not out or n + len(self.ready[0]) <= max_samples):
            g = self.ready.pop(0)
            out.append(g)
            n += len(g)
        return out

    @property
    def keep_rate(self) -> float | None:
        seen = self.kept + self.dropped
        return self.kept / seen if seen else None


def in_flight_target(cfg: WorkloadConfig, group_size: int, keep_rate: float | None) -> int:
    """Prompts to keep issued: enough for (1 + maxOffPolicySteps) steps, so staleness stays bounded by construction."""
    per_step = max(1, cfg.algorithm.global_batch_size // group_size)
    factor = cfg.algorithm.over_sampling_factor if cfg.algorithm.dynamic_sampling else 1.0
    rate = max(keep_rate or 1.0, 0.1) if cfg.algorithm.dynamic_sampling else 1.0
    return min(cfg.buffer.max_in_flight_prompts, math.ceil(per_step * factor / rate * (1 + cfg.max_off_policy_steps)))


async def run_decoupled(cfg: WorkloadConfig) -> None:
    tr = Trainer(cfg)
    extra = tr.restore_or_init()
    await tr.open_buffer()
    buf = tr.buffer
    # Versions only move forward: after a crash, agents may hold weights newer than the checkpoint.
    kv_state, _ = await buf.state.get()
    if extra or kv_state.weights_manifest:
        tr.progress.version = max(tr.progress.version, kv_state.policy_version) + 1
    manifest = await asyncio.to_thread(tr.publish)
    await buf.state.publish_version(tr.progress.version, manifest)
    # Staleness is decided here, per sample, so a dropped group's prompt can be replaced at once.
    consumer = await buf.trajectory_consumer(max_off_policy_steps=10**9)
    if extra.get("consumer"):
        consumer.load_state_dict(extra["consumer"])
    assembler = GroupAssembler(cfg.algorithm.dynamic_sampling, answered=set(extra.get("answered", [])))
    in_flight = InFlight(limit=cfg.buffer.max_in_flight_prompts)
    now = time.monotonic()
    # Prompts in flight at the crash are re-issued at once (as new attempts): their answers may
    # sit, unacked, with the dead trainer's consumer until the ack wait runs out, and waiting
    # for them would stall the job. Whichever attempt completes first is trained; the other is ignored.
    for raw in extra.get("in_flight", []):
        in_flight.issue(Prompt(**raw), now - PROMPT_REISSUE_S - 1)
    unacked = []
    stale_dropped = 0
    tr._rl_t0 = time.monotonic()
    try:
        while tr.progress.step < cfg.run_policy.max_steps:
            stage = tr.progress.curriculum.stage
            target = in_flight_target(cfg, tr.prompts.group_size(stage), assembler.keep_rate)
            # Groups assembled but not yet trained count against the budget too: they age as well.
            want = target - len(in_flight.issued) - len(assembler.ready)
            if want > 0:
                fresh = tr.prompts.take(want, stage)
                for p in fresh:
                    in_flight.issue(p, time.monotonic())
                await buf.publish_prompts(fresh)
            overdue = in_flight.overdue(time.monotonic(), PROMPT_REISSUE_S)
            if overdue:
                again = [replace(p, attempt=p.attempt + 1) for p in overdue]
                for p in again:
                    in_flight.issue(p, time.monotonic())
                await buf.publish_prompts(again)
                log.warning("re-issued overdue prompts", count=len(again))
            batch = await consumer.fetch(256, current_version=tr.progress.version, timeout=0.2)
            unacked.append(batch)  # includes duplicates and stale samples: done with at the next ack
            weights: dict[str, float] = {}
            for t, w in zip(batch.trajectories, batch.weights, strict=True):
                lag_weight = staleness_weight(t.policy_version, tr.progress.version, cfg.max_off_policy_steps)
                if lag_weight is None:
                    stale_dropped += 1
                    # The prompt's group is lost for training: count it answered so a fresh prompt replaces it.
                    if in_flight.complete(t.prompt_id):
                        assembler.answered.add(t.prompt_id)
                    continue
                weights[t.sample_id] = w * lag_weight
                done = assembler.add(t)
                if done is not None:
                    in_flight.complete(done)
            stale_dropped += assembler.drop_untrainable(tr.progress.version, cfg.max_off_policy_steps)
            if assembler.ready_samples() < cfg.algorithm.global_batch_size:
                continue
            groups = assembler.take(cfg.algorithm.global_batch_size)
            row = tr.train_on(groups, weights)
            row["stale_dropped"] = stale_dropped
            row["in_flight"] = len(in_flight.issued)
            if tr.due(cfg.weight_store.sync_interval_steps):
                manifest = await asyncio.to_thread(tr.publish)
                await buf.state.publish_version(tr.progress.version, manifest)
                await asyncio.to_thread(tr.store.prune, cfg.weight_store.keep_versions)
            if tr.due(cfg.checkpoint.interval_steps):
                await asyncio.to_thread(tr.checkpoint, {
                    "consumer": consumer.state_dict(), "answered": sorted(assembler.answered)[-10000:],
                    "in_flight": [asdict(p) for p, _ in in_flight.issued.values()],
                })
            # Ack only after the step (and its checkpoint) are committed: a crash before redelivers.
            for b in unacked:
                await b.ack()
            unacked = []
            await tr.report(row)
    finally:
        await buf.close()


def main() -> None:
    torch.set_num_threads(int(os.environ.get("KUBERL_TORCH_THREADS", "1")))
    cfg = load_config()
    log.info("trainer starting", job=cfg.job.name, mode=cfg.mode, max_steps=cfg.run_policy.max_steps)
    asyncio.run(run_colocated(cfg) if cfg.mode == "colocated" else run_decoupled(cfg))
    log.info("trainer finished", job=cfg.job.name)


if __name__ == "__main__":
    main()
