"""The code passes the linter's checks the project enforces (pyproject.toml [tool.ruff]):
an unused import, an undefined name or a shadowed definition fails here, not in a pod, and
so does a line over 120 characters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
