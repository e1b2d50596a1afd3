"""Every environment variable the operator sets on a workload container is read by the
process in it. Settings travel in the rendered config (or as a server's args); a variable
nobody reads is a setting that silently does nothing."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from kuberl.operator.children.render import render
from kuberl.operator.schema.validation import validate
from tests.support.objects import EXAMPLES, S

ROOT = Path(__file__).resolve().parents[3]
WORKLOADS = ROOT / "workloads/kuberl/workloads"
# Read by other programs than ours, named here with who reads them.
READ_ELSEWHERE = {
    "MASTER_ADDR": "torch.distributed env:// rendezvous (the megatron backend, issue 13)",
    "MASTER_PORT": "torch.distributed env:// rendezvous", "NNODES": "torchrun", "NODE_RANK": "torchrun",
    "NPROC_PER_NODE": "torchrun", "WORLD_SIZE": "torch.distributed",
    "SGLANG_USE_CPU_ENGINE": "SGLang's CPU build",
    "PYTHONPATH": "the SGLang server's interpreter (sgl_kernel stand-in)",
    "PYTHONUNBUFFERED": "the Python interpreter",
    "HOME": "Python's Path.home(): torch, triton, Hugging Face and SGLang caches (on the writable /tmp)",
    "XDG_CACHE_HOME": "Hugging Face, flashinfer and pip caches (on the writable /tmp)",
    "POD_IP": "the AgentEnv reference server's advertised replica address (agentenv/__main__.py reads it via env.get)",
}


def _read_by_workloads() -> set[str]:
    """Names the workload code reads from its environment (literals, or constants holding them)."""
    constants, names = {}, set()
    for path in WORKLOADS.rglob("*.py"):
        text = path.read_text()
        constants.update(re.findall(r'^([A-Z_]+) = "([A-Z_]+)"', text, flags=re.M))
        for line in text.splitlines():
            if "environ" in line or "getenv" in line:
                names.update(re.findall(r'"([A-Z][A-Z0-9_]+)"', line))
                names.update(constants.get(c, "") for c in re.findall(r"\b([A-Z][A-Z0-9_]+)\b", line))
    return names - {""}


def test_every_variable_the_operator_sets_is_read():
    docs = [validate(d) for f in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    user = {e["name"] for d in docs for e in _user_env(d)}
    set_by_operator = set()
    for child in render(docs, S, check=False):  # every example, those the operator refuses on a cluster too
        pod = child["spec"] if child["kind"] == "Pod" else (child.get("spec") or {}).get("template", {}).get("spec")
        for c in (pod or {}).get("containers", []) + (pod or {}).get("initContainers", []):
            set_by_operator |= {e["name"] for e in c.get("env", [])} - user
    assert set_by_operator, "the examples render workload containers"
    unread = sorted(set_by_operator - _read_by_workloads() - set(READ_ELSEWHERE))
    assert not unread, f"environment variables the operator sets and no process reads: {unread}"


def _user_env(node) -> list[dict]:
    """Every `env` list a manifest sets (trainer, agent, AgentEnv, inline templates): the user's, not the operator's."""
    if isinstance(node, list):
        return [e for item in node for e in _user_env(item)]
    if not isinstance(node, dict):
        return []
    own = node["env"] if isinstance(node.get("env"), list) else []
    return own + [e for k, v in node.items() if k != "env" for e in _user_env(v)]
