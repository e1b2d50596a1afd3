"""`kuberl run` of the real path on CPU: megatron-core as a torchrun gang (tensor parallel 2,
gloo) trains, an SGLang server (its CPU build) generates, decoupled over NATS and S3.

A shortened examples/tiny-megatron-sglang.yaml must improve clearly over its start. It is
also the gang's failure drill: torchrun's agent is SIGKILLed after a checkpoint; its ranks
die with it (none is left holding a collective), the runner restarts the trainer, and the
new gang resumes every rank from the checkpoint. Its colocated twin
(examples/tiny-megatron-sglang-colocated.yaml: the SGLang server started by trainer rank 0,
updated in place every step) must improve as well. For CI time the two run side by side;
every assertion is about steps, not wall time.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.operator.local.test_local_run import (
    IMPROVEMENT,
    finish,
    rows,
    shortened,
    start_run,
    wait_for_step,
    window_mean,
)
from tests.support.fixtures_sglang import sglang_venv  # noqa: F401  (fixture)

pytestmark = pytest.mark.servers

STEPS, CHECKPOINT_EVERY, KILL_GANG_AFTER = 60, 10, 25
COLOCATED_STEPS = 60


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory, nats_server, s3_server, sglang_venv):
    """The decoupled drill and the colocated run, started together."""
    tmp = tmp_path_factory.mktemp("real-path")
    out, col_out = tmp / "run", tmp / "colocated"
    proc = start_run(shortened("tiny-megatron-sglang.yaml", tmp, STEPS, CHECKPOINT_EVERY), out, nats_server.url,
                     s3_server)
    col = start_run(shortened("tiny-megatron-sglang-colocated.yaml", tmp, COLOCATED_STEPS, 50), col_out,
                    nats_server.url, s3_server)
    try:
        wait_for_step(proc, out, 1, timeout=900)  # SGLang's start on two busy cores
        killed_at = wait_for_step(proc, out, KILL_GANG_AFTER, timeout=900)
        agent = psutil.Process(json.loads((out / "pids.json").read_text())["trainer"])
        ranks = agent.children()
        agent.send_signal(signal.SIGKILL)
        output = finish(proc, timeout=1200)
        col_output = finish(col, timeout=1200)
    finally:
        for p in (proc, col):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(60)
    return (out, output, killed_at, ranks), (col_out, col_output)


@pytest.fixture(scope="module")
def real_run(both_runs):
    return both_runs[0]


@pytest.fixture(scope="module")
def colocated_run(both_runs):
    return both_runs[1]


def test_colocated_megatron_with_sglang_beside_it_improves_reward(colocated_run):
    out, output = colocated_run
    metrics = rows(out)
    assert [r["step"] for r in metrics] == list(range(1, COLOCATED_STEPS + 1))
    start, end = window_mean(metrics[:10]), window_mean(metrics[-10:])
    assert start <= 0.25 and end >= start + IMPROVEMENT, f"{start:.3f} -> {end:.3f}\n{output[-2000:]}"
    log = (out / "logs" / "trainer.log").read_text()
    # One in-place update per step plus the first load, all through the server's own loader.
    assert log.count("sglang weights swapped") == COLOCATED_STEPS + 1
    assert "GPU memory release/resume skipped" in log and "'skip_tokenizer_init': False" in log
    # On-policy: the engine generated with exactly the weights the trainer then trained.
    assert max(r["behaviour_gap"] for r in metrics) < 1e-3


def test_megatron_and_sglang_improve_reward(real_run):
    out, output, _, _ = real_run
    metrics = rows(out)
    assert metrics[-1]["step"] == STEPS
    start, end = window_mean(metrics[:10]), window_mean(metrics[-10:])
    assert start <= 0.25, f"warm start should not teach the answers: start reward {start:.3f}"
    assert end >= start + IMPROVEMENT, f"no real improvement: {start:.3f} -> {end:.3f}\n{output[-2000:]}"
    logs = out / "logs"
    assert "starting the trainer gang" in (logs / "trainer.log").read_text()
    assert "trainer rank finished" in (logs / "trainer.log").read_text()  # the follower released at the end
    assert (logs / "rollout-0.log").read_text().count("sglang weights swapped") >= STEPS // 2


def test_a_killed_gang_leaves_no_rank_behind_and_resumes_from_its_checkpoint(real_run):
    out, output, killed_at, ranks = real_run
    assert len(ranks) == 2, "torchrun ran the two tensor-parallel ranks"
    deadline = time.monotonic() + 30
    while any(r.is_running() and r.status() != psutil.STATUS_ZOMBIE for r in ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(r.is_running() and r.status() != psutil.STATUS_ZOMBIE for r in ranks)
    metrics = rows(out)
    resumed = sorted({r["resumed_from"] for r in metrics if r.get("resumed_from") is not None})
    assert resumed and resumed[0] % CHECKPOINT_EVERY == 0 and resumed[0] >= 2 * CHECKPOINT_EVERY, (resumed,
                                                                                                   output[-2000:])
    steps_after = [r["step"] for r in metrics if r.get("resumed_from") == resumed[0]]
    assert (
        steps_after[0] == resumed[0] + 1
        and max(r["step"] for r in metrics if r.get("resumed_from") is None) >= killed_at
    )
    assert json.loads((out / "summary.json").read_text())["restarts"].get("trainer", 0) >= 1


def test_the_rollout_engine_served_the_models_own_tokenizer(real_run):
    """No --skip-tokenizer-init: SGLang loads the builtin checkpoint's tokenizer.json (its
    output, server arguments included, is in the run's logs, not a file left in /tmp)."""
    out, _, _, _ = real_run
    log = (Path(out) / "logs" / "sglang-0.log").read_text()
    assert "'skip_tokenizer_init': False" in log and "'tokenizer_path': '" in log and "builtin-tiny" in log
