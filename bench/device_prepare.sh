#!/usr/bin/env bash
# Run HERE (no GPU needed), once before a device lease: download the wheels the GPU
# machine lacks into .whl/ (ignored via .git/info/exclude), for its Python 3.12.
# Its image already has torch 2.11 (CUDA 13), numpy and packaging; megatron-core is the
# only missing package (2.6 MB, compiled for cp312).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
pip="${PIP:-.venv/bin/pip}"
"$pip" download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl megatron-core==0.16.1
ls -la .whl
