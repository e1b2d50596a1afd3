#!/usr/bin/env bash
# The GPU device check for issue 8, run on a lent H200 through the device tool:
#
#   bench/device_prepare.sh            # here, once: megatron-core wheel into .whl/
#   run(command="bash bench/device_check.sh", carry=[".whl"], timeout_s=540)
#
# Measures (bench/device_check.py, one JSON document on stdout and in $OUT):
#   * the megatron-core policy backend's training step (bf16, Float16Module) on a random
#     ~0.5B Qwen2-shaped model: tokens/s, TFLOP/s and MFU;
#   * blockwise FP8 quantisation (kuberl.workloads.weights.fp8) throughput against the device's
#     copy bandwidth measured in the same run (the ceiling: ~4.2 TB/s on an H200).
# Copy the JSON to bench/results/device_check.json and commit it.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
# kuberl.workloads straight from the tree (a namespace package; no install needed).
export PYTHONPATH="$PWD/workloads${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
out="${OUT:-bench/results}"
mkdir -p "$out"
python3 bench/device_check.py --out "$out/device_check.json" "$@"
