#!/usr/bin/env bash
# The megatron trainer on the current megatron-core (0.19) and Python 3.12, in a cache venv.
#
#   e2e/megatron/setup.sh               install if missing or stale, print the venv directory
#   e2e/megatron/setup.sh --print-dir   only print the venv directory
#
# The project venv is Python 3.11, whose newest megatron-core is 0.16.1; GPU images ship
# Python 3.12 with megatron-core 0.19.x. This venv holds the trainer's third-party packages
# only (requirements-py312.txt); the repository is put on PYTHONPATH by whoever runs it,
# so the venv never points into a clone.
#
# Idempotent like e2e/sglang/setup.sh: a stamp (hash of the pins + interpreter version)
# written last, after an import check; a second run does no work.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
reqs="$here/requirements-py312.txt"
cache="${KUBERL_CACHE:-$HOME/.cache/kuberl}"
venv="$cache/megatron-core-0.19-py312-venv"

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$venv"
  exit 0
fi

log() { echo "megatron/setup.sh: $*" >&2; }

# Any Python 3.12 will do: KUBERL_PY312, pyenv's (these machines have 3.12.1), or one on PATH
# (a pyenv shim on PATH may exist without answering, so each candidate must run).
python=""
for candidate in ${KUBERL_PY312:-} "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 "$(command -v python3.12 || true)"; do
  if [[ -x "$candidate" ]] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    python="$candidate"
    break
  fi
done
if [[ -z "$python" ]]; then
  log "no Python 3.12 found: install one (e.g. pyenv install 3.12) or set KUBERL_PY312 to its interpreter"
  exit 1
fi
pyver=3.12

want="$( { sha256sum "$reqs" | cut -d' ' -f1; echo "python $pyver"; } )"
stamp="$venv/.kuberl-setup"
mkdir -p "$cache"
exec 9>"$cache/.megatron-setup.lock"
if command -v flock >/dev/null; then flock 9; fi

# torch (imported by megatron-core) makes $TMPDIR/torchinductor_$USER at import: a file
# outside the cache that outlives every test. A .pth line runs at each interpreter start
# in this venv (set-up's check, tests, trainers under `kuberl run`) and points it into the
# cache; written on every run, so a venv set up before this line gets it too.
inductor_pth() {
  local site
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  printf 'import os; os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", %s)\n' "'$cache/torchinductor'" > "$site/kuberl-torchinductor.pth"
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
  inductor_pth
  log "up to date: $venv"
  echo "$venv"
  exit 0
fi

start=$(date +%s)
log "installing into $venv ($python)"
rm -rf "$venv"
"$python" -m venv "$venv"
inductor_pth
nice -n 10 "$venv/bin/python" -m pip install --quiet --no-cache-dir --prefer-binary -r "$reqs"
{ nice -n 10 "$venv/bin/python" -W ignore - <<'PY'
import megatron.core, torch
from megatron.core.models.gpt.gpt_model import GPTModel  # noqa: F401  (the trainer's imports)
from megatron.core.pipeline_parallel import schedules  # noqa: F401
print("megatron-core", megatron.core.__version__, "torch", torch.__version__, "imports")
PY
} >&2
# The CUDA libraries are the same wheels as in the other cache venvs: one copy at once, so
# a cold set-up's peak grows by this venv's own files only (1.7 GB measured), not by 5.7 GB.
if command -v hardlink >/dev/null; then nice -n 10 hardlink -q -t -O "$cache"/*-venv; fi
echo "$want" > "$stamp"
log "done in $(( $(date +%s) - start ))s, $(du -sh "$venv" | cut -f1)"
echo "$venv"
