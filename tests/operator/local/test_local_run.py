"""`kuberl run` end to end on CPU: real nats-server, SeaweedFS, trainer, rollout agent.

Shortened versions of examples/tiny-cpu*.yaml (fewer steps, built here from the examples)
must still improve clearly over the starting reward. The decoupled run is also a failure
drill: the rollout agent is SIGKILLed mid-run (the runner restarts it, the job finishes)
and so is the trainer after a checkpoint (the runner restarts it and it resumes from the
last checkpoint it wrote).

The decoupled drill's reward is a python entry point that raises on 10 % of calls and hangs
on 1 %; the colocated run's comes from an AgentEnv that drops 10 % of its connections and
answers 2 % of requests with 500. Those samples are masked and counted, and both jobs still
learn.

For CI time, both runs go at once against the session's nats-server and SeaweedFS
(`kuberl run --nats-url/--s3-endpoint`, each job in its own bucket); every assertion is
about steps, not wall time, so sharing the CPU does not change what is checked.
"""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from kuberl.workloads.localproc import dies_with_parent

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.servers

IMPROVEMENT = 0.15  # mean reward of the last steps over the first steps, absolute
COLOCATED_STEPS = 100
DECOUPLED_STEPS = 120
CHECKPOINT_EVERY = 10  # decoupled; the trainer is killed after its second checkpoint
KILL_AGENT_AT, KILL_TRAINER_AFTER = 8, 25
FULL_VERSION_EVERY = 4  # decoupled: weight versions between whole ones go as deltas
# Colocated: the engine beside the trainer takes every step's weights in place; the store gets
# a version every syncIntervalSteps and keeps the newest keepVersions.
COLOCATED_SYNC = {"syncIntervalSteps": 25, "keepVersions": 2}


WANDB = {"project": "kuberl-tests", "entity": "kuberl-ci", "mode": "offline", "group": "local-run",
         "tags": ["ci", "colocated"]}


# The decoupled drill's reward: the arithmetic verifier, except that 10 % of calls raise and
# 1 % hang (each abandoned after FLAKY_TIMEOUT_S). Those samples must be masked and counted,
# and the job must still finish and learn.
FLAKY_REWARD = {"type": "python",
                "python": {"entryPoint": "tests.support.rewards:flaky_arithmetic", "timeoutSeconds": 0.5}}


# The colocated run's reward: an AgentEnv (the reference server, arithmetic task) that drops
# 10 % of episode connections and answers 2 % of episode requests with 500. Drops are
# retried (the request never reached the task); a 500 masks its sample.
FLAKY_ENV = {"name": "sums",
             "spec": {"task": "arithmetic", "replicas": 1, "concurrencyPerReplica": 256, "episodeTimeoutSeconds": 60,
                                      "args": ["--fault-drop", "0.1", "--fault-error", "0.02", "--seed", "3"]}}


def shortened(example: str, tmp: Path, max_steps: int, checkpoint_every: int, observability: dict | None = None,
              reward: dict | None = None, agent_envs: list | None = None, weight_store: dict | None = None) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / example).read_text())
    doc["spec"]["weightStore"].update(weight_store or {})
    if observability:
        doc["spec"]["observability"] = observability
    if reward:
        doc["spec"]["reward"] = reward
    if agent_envs:
        doc["spec"]["agentEnvs"] = agent_envs
    doc["spec"]["runPolicy"]["maxSteps"] = max_steps
    doc["spec"]["checkpoint"]["intervalSteps"] = checkpoint_every
    # Shared S3: a bucket of its own, so no run ever sees another's weights or checkpoints.
    doc["spec"]["weightStore"]["bucket"] = f"kuberl-test-{uuid.uuid4().hex[:10]}"
    path = tmp / example
    path.write_text(yaml.safe_dump(doc))
    return path


def start_run(manifest: Path, out: Path, nats_url: str, s3, quiet: bool = True) -> subprocess.Popen:
    """`kuberl run` with stdout and stderr into a pipe: not a terminal, as under CI or `> log`."""
    env = dict(os.environ, AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key,
               AWS_DEFAULT_REGION="us-east-1", WANDB_SILENT="true")
    env.pop("KUBERL_LOG_FORMAT", None)
    return subprocess.Popen([sys.executable, "-m", "kuberl.operator.cli", "run", str(manifest), "-o", str(out),
                             *(["-q"] if quiet else []), "--nats-url", nats_url, "--s3-endpoint", s3.endpoint],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=dies_with_parent())


def last_step(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except ValueError:
        return 0


def wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while (seen := last_step(out)) < step:
        assert proc.poll() is None, f"kuberl run exited early:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"step {step} not reached in {timeout}s"
        time.sleep(0.2)
    return seen


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        pytest.fail(f"kuberl run did not finish in {timeout}s:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-4000:]
    return output


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def window_mean(rs: list[dict]) -> float:
    return sum(r["reward_mean"] for r in rs) / len(rs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, nats_server, s3_server):
    """The shortened colocated run and the decoupled drill, side by side; returns both outputs."""
    tmp = tmp_path_factory.mktemp("local-run")
    col_out, dec_out = tmp / "colocated", tmp / "decoupled"
    col_manifest = shortened("tiny-cpu-colocated.yaml", tmp, COLOCATED_STEPS, 50, {"wandb": WANDB},
                             reward={"type": "agentEnv", "agentEnv": "sums"}, agent_envs=[FLAKY_ENV],
                             weight_store=COLOCATED_SYNC)
    col = start_run(col_manifest, col_out, nats_server.url, s3_server, quiet=False)
    col_t0 = time.monotonic()
    dec = start_run(shortened("tiny-cpu.yaml", tmp, DECOUPLED_STEPS, CHECKPOINT_EVERY, reward=FLAKY_REWARD,
                              weight_store={"fullVersionEvery": FULL_VERSION_EVERY}), dec_out,
                    nats_server.url, s3_server)
    try:
        wait_for_step(dec, dec_out, KILL_AGENT_AT)
        scraped = {name: scrape(url) for name, url in json.loads((dec_out / "endpoints.json").read_text()).items()}
        os.kill(json.loads((dec_out / "pids.json").read_text())["rollout-0"], signal.SIGKILL)
        killed_at = wait_for_step(dec, dec_out, KILL_TRAINER_AFTER)  # past the checkpoint at step 20
        os.kill(json.loads((dec_out / "pids.json").read_text())["trainer"], signal.SIGKILL)
        dec_output = finish(dec)
        col_output = finish(col)
        col_wall = time.monotonic() - col_t0
    finally:
        for proc in (col, dec):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
    return {"colocated": (col_out, col_output), "decoupled": (dec_out, dec_output, killed_at),
            "colocated_wall_s": col_wall, "scraped": scraped, "colocated_manifest": col_manifest}


def scrape(url: str) -> dict[str, float]:
    """One Prometheus scrape of a real process: {series (with labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (loopback)
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_colocated_run_improves_reward(runs):
    out, _ = runs["colocated"]
    metrics = rows(out)
    assert [r["step"] for r in metrics] == list(range(1, COLOCATED_STEPS + 1))
    start, end = window_mean(metrics[:10]), window_mean(metrics[-10:])
    assert start <= 0.25, f"warm start should not teach the answers: start reward {start:.3f}"
    assert end >= start + IMPROVEMENT, f"no real improvement: {start:.3f} -> {end:.3f}"
    assert (out / "reward_curve.png").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "colocated" and summary["steps"] == COLOCATED_STEPS


def test_colocated_run_with_a_flaky_environment_masks_and_counts_what_it_could_not_score(runs):
    """Its reward comes from an environment that drops connections and answers some requests
    with 500: the run still learns (test_colocated_run_improves_reward); failed samples are
    masked, counted per step and in total, and in summary.json."""
    out, _ = runs["colocated"]
    metrics = rows(out)
    total, trained = metrics[-1]["infra_failed_total"], metrics[-1]["samples_trained"]
    # Two episode requests each (reset, step; the DELETE is bookkeeping): a 500 on either
    # fails the sample, about 4 % of them. Dropped connections are retried and cost nothing.
    assert 0.01 * trained < total < 0.10 * trained, (total, trained)
    assert json.loads((out / "summary.json").read_text())["infra_failed_samples"] == total
    # The environment did misbehave: its counters, logged as it stopped.
    [stopping] = [json.loads(line) for line in (out / "logs" / "agentenv-sums.log").read_text().splitlines()
                  if line.startswith("{") and '"agentenv stopping"' in line]
    assert stopping["fault_dropped"] > 0.05 * stopping["started"] and stopping["fault_errors"] > 0


def test_colocated_run_publishes_every_sync_interval_and_keeps_the_newest_versions(runs, s3_server):
    """weightStore.syncIntervalSteps and keepVersions act in colocated mode as in decoupled
    (`Trainer.after_round`, one order for both modes)."""
    from kuberl.workloads.trainer.ledger import read_ledger

    out, output = runs["colocated"]
    interval, keep = COLOCATED_SYNC["syncIntervalSteps"], COLOCATED_SYNC["keepVersions"]
    published = [e["version"] for e in read_ledger(out) if e["event"] == "published"]
    # One version per interval crossed (at the end of the round that crossed it), the last at the last step.
    assert [v // interval for v in published] == list(range(1, COLOCATED_STEPS // interval + 1)), (published,
                                                                                                   output[-2000:])
    assert published[-1] == COLOCATED_STEPS
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "weight_sync_bytes" in r] == published
    bucket = yaml.safe_load(runs["colocated_manifest"].read_text())["spec"]["weightStore"]["bucket"]
    keys = [o["Key"] for page in s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    stored = sorted(int(m.group(1)) for k in keys if (m := re.search(r"/v(\d{8})/manifest\.json$", k)))
    assert stored == published[-keep:], keys


def test_colocated_run_evaluates_held_out_prompts(runs):
    """spec.evaluation of the example (held-out sums, every 100 steps, 4 samples): the
    untrained policy first, then at the interval; in the metrics and the summary."""
    out, _ = runs["colocated"]
    evals = [r for r in rows(out) if "eval_step" in r]
    assert [r["eval_step"] for r in evals] == [0, 100]
    keys = {"eval/held-out-sums/greedy", "eval/held-out-sums/pass@1", "eval/held-out-sums/pass@4"}
    assert all(keys <= set(r) for r in evals)
    assert all(r["eval/held-out-sums/pass@4"] >= r["eval/held-out-sums/pass@1"] for r in evals)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluation"]["eval_step"] == 100


def test_decoupled_run_evaluates_at_the_interval_and_the_end(runs):
    out, _, _ = runs["decoupled"]
    assert [r["eval_step"] for r in rows(out) if "eval_step" in r][-2:] == [100, DECOUPLED_STEPS]


def test_decoupled_run_improves_reward(runs):
    out, _, _ = runs["decoupled"]
    metrics = rows(out)
    assert metrics[-1]["step"] == DECOUPLED_STEPS and metrics[-1]["mode"] == "decoupled"
    start, end = window_mean(metrics[:10]), window_mean(metrics[-10:])
    assert start <= 0.25, f"warm start should not teach the answers: start reward {start:.3f}"
    assert end >= start + IMPROVEMENT, f"no real improvement: {start:.3f} -> {end:.3f}"
    # Off-policy samples stay within the bound (maxOffPolicySteps: 1).
    assert max(r["staleness_mean"] for r in metrics) <= 1.0


def test_decoupled_run_masks_and_counts_the_samples_its_reward_could_not_score(runs):
    """11 % of reward calls raise or hang: those samples are masked out of the loss, counted
    per step and in total (across the trainer's restart, from its checkpoint), and left out of
    the reward statistics; the job still learns (test_decoupled_run_improves_reward)."""
    out, _, _ = runs["decoupled"]
    metrics = rows(out)
    total = metrics[-1]["infra_failed_total"]
    trained = metrics[-1]["samples_trained"]
    assert 0.06 * trained < total < 0.16 * trained, (total, trained)
    assert all(0 < r["infra_failed"] < r["samples"] for r in metrics)
    # Counted in order, the restarted trainer continuing from its checkpoint's count.
    resumed = [r for r in metrics if r.get("resumed_from") is not None]
    assert resumed and resumed[0]["infra_failed_total"] > resumed[0]["infra_failed"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == DECOUPLED_STEPS and summary["infra_failed_samples"] == total


def test_killed_rollout_agent_is_restarted_and_job_finishes(runs):
    out, output, _ = runs["decoupled"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["restarts"].get("rollout-0", 0) >= 1, output[-2000:]
    assert summary["steps"] == DECOUPLED_STEPS


def test_killed_trainer_resumes_from_its_last_checkpoint(runs):
    out, output, killed_at = runs["decoupled"]
    metrics = rows(out)
    resumed = sorted({r["resumed_from"] for r in metrics if r.get("resumed_from") is not None})
    assert resumed, f"trainer did not resume from a checkpoint\n{output[-2000:]}"
    first_life = [r["step"] for r in metrics if r.get("resumed_from") is None]
    died_after = max(first_life)  # the last step the killed trainer reported
    assert died_after >= killed_at
    # The latest checkpoint it wrote: the last multiple of the interval it reached (it checkpoints
    # before it reports, so one reached but not yet reported counts too).
    assert resumed[0] % CHECKPOINT_EVERY == 0 and resumed[0] >= 2 * CHECKPOINT_EVERY, resumed
    assert died_after - CHECKPOINT_EVERY < resumed[0] <= died_after + 1, (resumed, died_after)
    # The restarted trainer continues the step count from the checkpoint instead of starting over.
    steps_after = [r["step"] for r in metrics if r.get("resumed_from") == resumed[0]]
    assert steps_after[0] == resumed[0] + 1
    assert json.loads((out / "summary.json").read_text())["restarts"].get("trainer", 0) >= 1


def test_the_drill_loses_no_prompt_and_trains_none_twice(runs):
    """The trainer's ledger, replayed (`kuberl.operator.local.audit`): across the agent's and
    the trainer's SIGKILL, every prompt slot issued was trained, dropped for a reason, or is
    in flight at the end; none trained twice; steps 1..N each committed once; every version
    an agent loaded was published whole."""
    from kuberl.operator.local.audit import audit_run

    out, output, _ = runs["decoupled"]
    audit = audit_run(out)
    assert audit.finished and audit.steps == DECOUPLED_STEPS and audit.restarts >= 1, output[-2000:]
    assert audit.zeros() == dict.fromkeys(audit.zeros(), 0), audit
    assert audit.reissued > 0 and audit.versions_loaded > 0  # the restored trainer re-issued its in-flight prompts
    # The SIGKILLed agent's fetched versions were in the run's scratch, which the run removed.
    assert not (out / "scratch").exists()


def test_the_drill_synced_delta_versions_and_a_restarted_trainer_began_whole(runs):
    """weightStore.fullVersionEvery in the drill: the versions between whole ones went over
    the wire as deltas, a fraction of the version's bytes, a whole one at least every N; a
    restarted trainer (its local copy gone with the process) publishes whole first. The
    agents rebuilt each delta (the killed one with nothing local: from the store's chain),
    and the audit above checks every version an agent loaded by the digest of its files."""
    from kuberl.workloads.trainer.ledger import read_ledger

    out, output, _ = runs["decoupled"]
    events = read_ledger(out)
    published = [e for e in events if e["event"] == "published"]
    deltas = [e for e in published if e.get("parent") is not None]
    assert len(deltas) >= len(published) // 2, output[-2000:]
    assert all(e["parent"] == e["version"] - 1 and e["stored_bytes"] < e["bytes"] for e in deltas)
    run = 0
    for e in published:
        run = run + 1 if e.get("parent") is not None else 0
        assert run < FULL_VERSION_EVERY, published
    for incarnation in {e["incarnation"] for e in published}:
        assert next(e for e in published if e["incarnation"] == incarnation).get("parent") is None
    # Each version's stages (weights.stages), recorded by the trainer that published it.
    for e in published:
        # A delta file's checksum is taken by its encoder as it reads the file: no checksum stage of its own.
        expected = {"quantise", "serialise", "upload",
                    "manifest"} | ({"encode"} if e.get("parent") is not None else {"checksum"})
        assert expected <= set(e["stages"]) and all(v >= 0 for v in e["stages"].values()), e
        assert sum(e["stages"][k] for k in ("quantise", "serialise", "manifest")) <= e["seconds"] + 0.01, e
    # ... and each load's, logged by the agent that loaded it: delta versions were rebuilt.
    swaps = [json.loads(line) for path in sorted((out / "logs").glob("rollout-*.log"))
             for line in path.read_text(errors="replace").splitlines() if '"weights swapped"' in line]
    assert swaps and all({"download", "verify", "engine_load"} <= set(s["stages"]) for s in swaps), swaps[:3]
    assert any("reconstruct" in s["stages"] for s in swaps), swaps[:3]
    # weightFetch perNode: the agent claimed each version for its host and downloaded it.
    assert {s["source"] for s in swaps} <= {"store-claimed", "store",
                                            "relay"} and any(s["source"] == "store-claimed" for s in swaps)


# -- what users watch: run loggers, Prometheus, progress outside a terminal ----------------


def test_tensorboard_event_files_match_metrics_jsonl(runs):
    """On by default: every numeric field of every metrics.jsonl row is a scalar at its step
    in runs/<job>/tensorboard, read back with TensorBoard's own event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kuberl.workloads.observe.scalars import is_scalar, tag

    out, _ = runs["colocated"]
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    logged = {t: {e.step: e.value for e in events.Scalars(t)} for t in events.Tags()["scalars"]}
    checked = 0
    for row in rows(out):
        for key, value in row.items():
            if is_scalar(key, value):
                assert logged[tag(key)][row["step"]] == pytest.approx(value, rel=1e-6, abs=1e-6), (key, row["step"])
                checked += 1
    assert checked > 30 * COLOCATED_STEPS
    for must in ("reward/reward_mean", "loss/loss", "loss/entropy", "ppo/clip_frac", "off_policy/is_weight_mean",
                 "throughput/tokens_per_s",
                 "length/response_length_mean", "time/time_generate_s", "time/train_s", "eval/held-out-sums/pass@1"):
        assert must in logged, must
    staleness = events.Histograms("off_policy/staleness")
    assert len(staleness) == COLOCATED_STEPS and staleness[0].histogram_value.num == rows(out)[0]["samples"]


def test_wandb_offline_run_holds_the_same_rows(runs):
    """observability.wandb mode offline: a run directory `wandb sync` uploads later, with the
    job's project, entity, group and tags, and every row under the same tags (no network)."""
    from wandb.proto import wandb_internal_pb2 as pb

    from kuberl.workloads.observe.scalars import scalars
    from tests.support.wandb_records import history, payloads

    out, _ = runs["colocated"]
    [run_file] = (out / "wandb").glob("offline-run-*/run-*.wandb")
    logged = history(run_file)
    expected = rows(out)
    assert [h["_step"] for h in logged] == [r["step"] for r in expected]
    for h, row in zip(logged, expected, strict=True):
        for name, value in scalars(row).items():
            assert h[name] == pytest.approx(value, rel=1e-6), (name, row["step"])
    assert logged[0]["off_policy/staleness/_type"] == "histogram"  # W&B flattens the histogram object
    records = [pb.Record.FromString(raw) for raw in payloads(run_file)]
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"][:1]
    assert (run.project, run.entity, run.run_group, list(run.tags)) == (WANDB["project"], WANDB["entity"],
                                                                        WANDB["group"], WANDB["tags"])


def test_progress_outside_a_terminal_is_a_line_every_few_seconds(runs):
    """stderr into a pipe: no redrawn bar (no carriage returns), JSON progress lines, fewer
    than one per second of the run."""
    _, output = runs["colocated"]
    assert "\r" not in output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{") and '"progress"' in line]
    assert lines and all(line["event"] == "progress" for line in lines)
    assert len(lines) < runs["colocated_wall_s"], (len(lines), runs["colocated_wall_s"])
    assert lines[-1]["step"] == COLOCATED_STEPS and lines[-1]["max_steps"] == COLOCATED_STEPS
    assert {"reward", "samples_per_s", "policy_version", "eta_s"} <= set(lines[-1])


def test_workload_processes_serve_prometheus_metrics(runs):
    """Scraped from the real trainer and rollout agent while the decoupled job ran."""
    trainer, agent = runs["scraped"]["trainer"], runs["scraped"]["rollout-0"]
    assert trainer["kuberl_trainer_step"] >= KILL_AGENT_AT
    assert trainer["kuberl_trainer_samples_total"] >= KILL_AGENT_AT * 128
    assert trainer["kuberl_trainer_tokens_total"] > trainer["kuberl_trainer_samples_total"]
    assert trainer["kuberl_trainer_phase_seconds_total{part=training}"] > 0
    assert trainer["kuberl_trainer_phase_seconds_total{part=waiting}"] > 0
    assert (
        trainer["kuberl_trainer_weight_sync_seconds_count"] >= 1
        and trainer["kuberl_trainer_weight_sync_bytes_total"] > 0
    )
    assert 0 <= trainer["kuberl_trainer_reward{stat=mean}"] <= 1
    assert agent["kuberl_rollout_tokens_total"] > 0 and agent["kuberl_rollout_generation_seconds_count"] > 0
    assert agent["kuberl_rollout_groups_total{outcome=published}"] >= 1
    assert agent["kuberl_rollout_weight_swaps_total"] >= 1 and agent["kuberl_rollout_engine_healthy"] == 1
    assert agent["kuberl_rollout_policy_version"] >= 0
    assert "kuberl_trainer_step" not in agent  # each process exports its own series
