"""The quick benchmarks, run at toy sizes so they cannot rot: each completes and writes its
result file (under a temp dir, never over bench/results/). No timing is asserted; the
measured numbers come from full runs by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

# script, toy-size arguments, keys its result must hold
QUICK = [
    ("bench_buffer.py", ["--messages", "40", "--tokens", "64", "--batch", "16", "--rounds", "1"],
     ["ratio", "raw", "ours"]),
    ("bench_weights.py",
     ["--shards", "1", "--shard-mib", "2", "--rounds", "1", "--fp8-layers", "1", "--fp8-hidden", "256"],
     ["ratio", "delta", "fp8"]),
    ("bench_weight_deltas.py", ["--mib", "1", "--shares", "0.03"], ["rows", "copy_mb_s"]),
    ("bench_node_fetch.py", ["--agents", "2", "--shards", "1", "--shard-mib", "1", "--rounds", "1"],
     ["store_bytes_ratio", "wall_ratio"]),
    ("sync_scale_model.py", ["--gib", "0.03"], ["scenarios", "measured_here_mb_s_per_core"]),
    ("fp8_logprob_gap.py", ["--seeds", "1"], ["mean_abs", "ratio_fp8_to_bf16_gap"]),
    # Two `kuberl run`s of a few steps each (about a minute each here): the manifests they
    # build follow the API (this one had rotted: it set offPolicyCorrection fields long gone).
    ("bench_decoupled.py", ["--steps", "4", "--decoupled-steps", "8", "--no-abandon-ab", "--work", "{tmp}/work"],
     ["samples_per_s_ratio", "reward_at_equal_steps"]),
    ("ablation.py", ["--steps", "4", "--seeds", "1", "--work", "{tmp}/work"], ["summary_mean_std", "runs"]),
    # One SGLang server (float32), a few samples scored by both trainer backends.
    ("logprob_mismatch.py", ["--dtypes", "float32", "--samples", "5", "--max-new-tokens", "4"],
     ["results", "float32_meets_target"]),
    # Two SGLang servers (scheduler spinning, then parked), each idle for a second.
    ("bench_engine_idle.py", ["--idle-s", "1", "--requests", "1", "--gap-s", "0.2", "--work", "3", "--rounds", "1"],
     ["modes", "neighbour_slowdown", "idle_cores_saved"]),
    # The GPU check's own toy mode on the CPU: its code cannot rot between the rare GPU loans.
    # It runs on the device machine without bench/_common, so it writes where --out says.
    ("device_check.py", ["--tiny", "--device", "cpu", "--out", "{tmp}/results/device_check.json"],
     ["fp8", "megatron_step"]),
    # Each command run once, and the unbounded reader (which never finishes the billion laughs) killed after 5 s.
    ("bench_hostile_yaml.py", ["--runs", "1", "--unbounded-timeout", "5"], ["cases", "render", "worst"]),
    # The kwok control plane, a nats-server and the operator: a few jobs instead of a hundred.
    ("bench_operator.py", ["--jobs", "3", "--rounds", "1", "--steady-seconds", "1"],
     ["apply_to_children_s", "many_jobs"]),
    # Two replicas, the leader SIGKILLed after two of four small jobs: the standby takes over.
    ("bench_operator_scale.py", ["--jobs", "4", "--trainer", "1", "--rollout", "1", "--envs", "1", "--rate", "0",
                                 "--steady-seconds", "1"],
     ["failover_s", "apply_to_children_s", "children_duplicated"]),
    # `kuberl run` of a short decoupled job, a workload process SIGKILLed every few seconds;
    # the script itself fails when its audit finds a prompt lost or a group trained twice.
    ("chaos.py", ["--minutes", "0.5", "--kill-every", "8", "--max-steps", "40", "--no-baseline"],
     ["chaos", "settings"]),
]


def _errors(value, path: str = "") -> list[str]:
    """Where a result reports a failure it caught and wrote down instead of exiting non-zero."""
    if isinstance(value, dict):
        return [f"{path}.{k}" for k in value if k == "error"] + [e for k,
                                                                 v in value.items() for e in _errors(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [e for i, v in enumerate(value) for e in _errors(v, f"{path}[{i}]")]
    return []


@pytest.mark.servers
@pytest.mark.parametrize(("script", "args", "keys"), QUICK, ids=[q[0] for q in QUICK])
def test_the_benchmark_runs_and_writes_its_result(script, args, keys, tmp_path):
    results = tmp_path / "results"
    argv = [a.format(tmp=tmp_path) for a in args]
    done = subprocess.run([sys.executable, str(BENCH / script), *argv], cwd=BENCH, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "KUBERL_BENCH_RESULTS": str(results)})
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    [written] = list(results.glob("*.json"))
    result = json.loads(written.read_text())
    assert written.stem == result["benchmark"] and all(k in result for k in keys), sorted(result)
    assert not _errors(result), _errors(result)
