"""`kuberl operator`: the entry point and its imports (no cluster needed)."""

from __future__ import annotations

import subprocess
import sys

import yaml


def test_handlers_import_no_torch():
    code = "import sys, kuberl.operator.controllers, kuberl.operator.cli.run_operator; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_operator_subcommand_prints_the_peering_crds():
    out = subprocess.run([sys.executable, "-m", "kuberl.operator.cli", "operator", "--print-peering-crds"],
                         capture_output=True, text=True, check=True)
    crds = list(yaml.safe_load_all(out.stdout))
    assert {c["spec"]["names"]["kind"] for c in crds} == {"ClusterKopfPeering", "KopfPeering"}
    assert all(c["spec"]["group"] == "kopf.dev" for c in crds)


def test_operator_help_lists_the_options():
    out = subprocess.run([sys.executable, "-m", "kuberl.operator.cli", "operator", "--help"], capture_output=True,
                         text=True, check=True)
    for flag in ("--namespace", "--standalone", "--peering", "--priority", "--liveness"):
        assert flag in out.stdout
