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
    ("bench_buffer.py", ["--messages", "40", "--tokens", "64", "--batch", "16", "--rounds", "1"], ["ratio", "raw", "ours"]),
    ("bench_weights.py", ["--shards", "1", "--shard-mib", "2", "--rounds", "1", "--fp8-layers", "1", "--fp8-hidden", "256"],
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
]


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
