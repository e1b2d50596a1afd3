#!/usr/bin/env bash
# Install SGLang's HTTP server for CPU into its own venv, in a cache outside the repo.
#
#   e2e/sglang/setup.sh               install if missing or stale, print the venv directory
#   e2e/sglang/setup.sh --print-dir   only print the venv directory
#
# The server has its own interpreter because a full `pip install sglang` pulls ~11 GB and
# pins versions the project venv must not be bound to. Here only the packages its CPU path
# imports are installed, `--no-deps`, from e2e/sglang/requirements-cpu.txt. PyPI's
# sglang-kernel is CUDA-only: the two ops the CPU path calls come from kuberl's pure-torch
# stand-in (kuberl/workloads/engines/sglang/cpu_kernels/sgl_kernel), which the launcher puts first on the
# server's PYTHONPATH (kuberl.workloads.engines.sglang.launcher).
#
# Idempotent: a stamp holding the hash of the pin file and the interpreter version is
# written last, after the import check, so an interrupted install is never mistaken for a
# finished one and a second run does no work. The stand-in is not part of the stamp: it
# is read from the repo at every server start.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
reqs="$here/requirements-cpu.txt"
cache="${KUBERL_CACHE:-$HOME/.cache/kuberl}"
venv="$cache/sglang-0.5.23-venv"

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$venv"
  exit 0
fi

log() { echo "sglang/setup.sh: $*" >&2; }

python="${KUBERL_SGLANG_PYTHON:-$(command -v python3.11 || command -v python3)}"
pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ "$pyver" == "3.11" ]] || log "warning: pins were measured on Python 3.11, $python is $pyver"

want="$( { sha256sum "$reqs" | cut -d' ' -f1; echo "python $pyver"; } )"
stamp="$venv/.kuberl-setup"

mkdir -p "$cache"
# One install at a time per cache (CI step and a test fixture may both call us).
exec 9>"$cache/.sglang-setup.lock"
if command -v flock >/dev/null; then flock 9; fi

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
  log "up to date: $venv"
  echo "$venv"
  exit 0
fi

start=$(date +%s)
# The pip install is the slow part: its own marker lets a failed import check be re-run
# (after fixing the stand-in, say) without installing again.
installed="$venv/.kuberl-installed"
if [[ -f "$installed" && "$(cat "$installed")" == "$want" && -x "$venv/bin/python" ]]; then
  log "packages already installed in $venv; re-checking"
else
  log "installing into $venv (python $pyver)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  # Never take both cores of a shared machine for byte-compiling 90 wheels.
  nice -n 10 "$venv/bin/python" -m pip install --quiet --no-deps --prefer-binary -r "$reqs"
  echo "$want" > "$installed"
fi

# Check the set really imports the server path, with the stand-in first on the path,
# before calling it done (the tests then check that it serves).
{ PYTHONPATH="$repo/workloads/kuberl/workloads/engines/sglang/cpu_kernels" SGLANG_USE_CPU_ENGINE=1 \
  nice -n 10 "$venv/bin/python" -W ignore - <<'PY'
import sgl_kernel, sglang
assert getattr(sgl_kernel, "KUBERL_STANDIN", False), sgl_kernel.__file__
import sglang.srt.entrypoints.http_server  # noqa: F401  (the launch path's imports)
import sglang.srt.managers.scheduler  # noqa: F401
import sglang.srt.models.qwen2  # noqa: F401
print("sglang", sglang.__version__, "imports on CPU")
PY
} >&2

echo "$want" > "$stamp"
log "done in $(( $(date +%s) - start ))s, $(du -sh "$venv" | cut -f1)"
echo "$venv"
