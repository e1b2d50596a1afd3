"""`kuberl run` end to end on CPU: real nats-server, SeaweedFS, trainer, rollout agent.

Shortened versions of examples/tiny-cpu*.yaml (fewer steps) must still improve clearly
over the starting reward. The decoupled run is also a failure drill: the rollout agent is
SIGKILLed mid-run (the runner restarts it, the job finishes) and so is the trainer after
its first checkpoint (the runner restarts it and it resumes from that checkpoint).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.servers

IMPROVEMENT = 0.15  # mean reward of the last steps over the first steps, absolute


def shortened(example: str, tmp: Path, max_steps: int, checkpoint_every: int) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / example).read_text())
    doc["spec"]["runPolicy"]["maxSteps"] = max_steps
    doc["spec"]["checkpoint"]["intervalSteps"] = checkpoint_every
    path = tmp / example
    path.write_text(yaml.safe_dump(doc))
    return path


def start_run(manifest: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kuberl.operator.cli", "run", str(manifest), "-o", str(out), "-q"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def last_step(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except ValueError:
        return 0


def wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while last_step(out) < step:
        assert proc.poll() is None, f"kuberl run exited early:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"step {step} not reached in {timeout}s"
        time.sleep(0.3)


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


def test_colocated_run_improves_reward(tmp_path):
    out = tmp_path / "colocated"
    proc = start_run(shortened("tiny-cpu-colocated.yaml", tmp_path, max_steps=150, checkpoint_every=50), out)
    finish(proc)
    metrics = rows(out)
    assert metrics[-1]["step"] == 150
    start, end = window_mean(metrics[:10]), window_mean(metrics[-10:])
    assert start <= 0.25, f"warm start should not teach the answers: start reward {start:.3f}"
    assert end >= start + IMPROVEMENT, f"no real improvement: {start:.3f} -> {end:.3f}"
    assert (out / "reward_curve.png").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "colocated" and summary["steps"] == 150


@pytest.fixture(scope="module")
def decoupled_drill(tmp_path_factory):
    """A shortened decoupled run in which the rollout agent and then the trainer are killed."""
    tmp = tmp_path_factory.mktemp("decoupled")
    out = tmp / "out"
    proc = start_run(shortened("tiny-cpu.yaml", tmp, max_steps=160, checkpoint_every=20), out)
    try:
        wait_for_step(proc, out, 10)
        pids = json.loads((out / "pids.json").read_text())
        os.kill(pids["rollout-0"], signal.SIGKILL)
        wait_for_step(proc, out, 45)  # past the checkpoint at step 40
        pids = json.loads((out / "pids.json").read_text())
        os.kill(pids["trainer"], signal.SIGKILL)
        output = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
    return out, output


def test_decoupled_run_improves_reward(decoupled_drill):
    out, _ = decoupled_drill
    metrics = rows(out)
    assert metrics[-1]["step"] == 160 and metrics[-1]["mode"] == "decoupled"
    start, end = window_mean(metrics[:10]), window_mean(metrics[-10:])
    assert end >= start + IMPROVEMENT, f"no real improvement: {start:.3f} -> {end:.3f}"
    # Off-policy samples stay within the bound (maxOffPolicySteps: 1).
    assert max(r["staleness_mean"] for r in metrics) <= 1.0


def test_killed_rollout_agent_is_restarted_and_job_finishes(decoupled_drill):
    out, output = decoupled_drill
    summary = json.loads((out / "summary.json").read_text())
    assert summary["restarts"].get("rollout-0", 0) >= 1, output[-2000:]
    assert summary["steps"] == 160


def test_killed_trainer_resumes_from_its_last_checkpoint(decoupled_drill):
    out, output = decoupled_drill
    metrics = rows(out)
    resumed = sorted({r["resumed_from"] for r in metrics if r.get("resumed_from") is not None})
    assert resumed and resumed[0] >= 40, f"trainer did not resume from a checkpoint: {resumed}\n{output[-2000:]}"
    # The restarted trainer continues the step count from the checkpoint instead of starting over.
    steps_after = [r["step"] for r in metrics if r.get("resumed_from") == resumed[0]]
    assert steps_after[0] == resumed[0] + 1
    assert json.loads((out / "summary.json").read_text())["restarts"].get("trainer", 0) >= 1
