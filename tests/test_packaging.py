"""Packaging: the namespace layout never shadows the standard library; logging is configured once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_stdlib_operator_not_shadowed_from_repo_root():
    out = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.itemgetter(1)([0, 7]), operator.__file__)"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    value, where = out.stdout.split()
    assert value == "7"
    assert not where.startswith(str(ROOT))
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_kuberl_imports_from_both_source_roots():
    out = subprocess.run(
        [sys.executable, "-c",
         "import kuberl.operator, kuberl.workloads; print(kuberl.operator.__file__); print(kuberl.workloads.__file__)"],
        cwd="/", capture_output=True, text=True, check=True,
    )
    op, wl = out.stdout.split()
    assert op.startswith(str(ROOT / "operator"))
    assert wl.startswith(str(ROOT / "workloads"))


def test_operator_imports_no_torch():
    code = ("import sys, kuberl.operator.api, kuberl.operator.schema.crdgen, kuberl.operator.schema.validation, "
            "kuberl.operator.cli.main; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_logs_are_json_lines_when_not_a_tty():
    code = "from kuberl.workloads.logs import get_logger; get_logger('t').info('hello', step=3)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERL_LOG")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    record = json.loads(out.stderr.strip().splitlines()[-1])
    assert record["event"] == "hello" and record["step"] == 3 and record["level"] == "info" and "timestamp" in record


def test_console_format_can_be_forced():
    code = "from kuberl.workloads.logs import get_logger; get_logger('t').info('hello', step=3)"
    env = {**os.environ, "KUBERL_LOG_FORMAT": "console"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert "hello" in out.stderr and not out.stderr.strip().startswith("{")


def test_every_subpackage_is_listed_for_wheels():
    """Editable installs find subpackages on disk; wheels only ship what pyproject lists."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = set()
    for root, prefix in (("operator/kuberl/operator", "kuberl.operator"),
                         ("workloads/kuberl/workloads", "kuberl.workloads")):
        for init in (ROOT / root).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / root)
            if "cpu_kernels" in rel.parts:
                continue  # the sgl_kernel stand-in ships as package data for the SGLang server
            on_disk.add(".".join([prefix, *rel.parts]))
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
