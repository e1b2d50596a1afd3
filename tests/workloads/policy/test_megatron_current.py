"""The megatron trainer on the current megatron-core (0.19.x on Python 3.12, what GPU images ship).

The project venv is Python 3.11, whose newest megatron-core is 0.16.1. The megatron suites
run here, in the venv e2e/megatron/setup.sh installs (megatron-core 0.19, Python 3.12, the
same torch and transformers pins), against this checkout: the policy at TP and PP
(megatron_policy_suite.py) and the torchrun gang with its checkpoints across gang shapes
(megatron_gang_suite.py). Their names keep them out of the project venv's collection: each
runs once, on the version the GPU images ship (about five minutes of CI saved). The project
venv's 0.16.1 is exercised end to end instead: the `trainer.backend` seam against the torch
backend (test_trainer_backends.py), and `kuberl run` of the real path, a TP=2 gang SIGKILLed
and resumed from its checkpoint beside SGLang (tests/operator/local/test_local_run_real_path.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SETUP = REPO / "e2e" / "megatron" / "setup.sh"
# The suites that call megatron-core (the `trainer.backend` seam test adds nothing version-specific).
MODULES = ["tests/workloads/policy/megatron_policy_suite.py", "tests/workloads/policy/megatron_gang_suite.py"]


@pytest.fixture(scope="module")
def current_python() -> Path:
    run = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=3600, check=False)
    assert run.returncode == 0, f"e2e/megatron/setup.sh failed:\n{run.stderr[-4000:]}"
    return Path(run.stdout.strip().splitlines()[-1]) / "bin" / "python"


@pytest.mark.timeout(2400)  # two modules of torchrun gangs, on two cores, beside nothing else
def test_the_megatron_tests_pass_on_the_current_megatron_core(current_python, tmp_path):
    # The gang's sharded weight sync publishes to SeaweedFS: its binary comes from this venv's bin.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("", "operator", "workloads")),
           "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    versions = subprocess.run([str(current_python), "-c", "import sys, megatron.core, torch; "
                               "print(megatron.core.__version__, '%d.%d' % sys.version_info[:2], torch.__version__)"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert versions[0].startswith("0.19.") and versions[1] == "3.12", versions
    run = subprocess.run([str(current_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
                          f"--basetemp={tmp_path / 'inner'}", *MODULES],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=2300, check=False)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    # Every test ran and passed there: none skipped, deselected or erroring.
    assert re.fullmatch(r"=* ?\d+ passed in [\d.]+s.*", summary), summary
