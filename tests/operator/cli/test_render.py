"""`kuberl render`: what the operator would create, as YAML a user can read or apply."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from kuberl.workloads.config import WorkloadConfig

ROOT = Path(__file__).resolve().parents[3]


def render(*files: str, namespace: str | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "kuberl.operator.cli", "render", *(str(ROOT / "examples" / f) for f in files)]
    if namespace:
        argv += ["-n", namespace]
    return subprocess.run(argv, capture_output=True, text=True)


def test_a_decoupled_job_with_its_shared_pool_renders_every_child():
    out = render("decoupled-agentic.yaml", "shared-rolloutpool.yaml", namespace="team-a")
    assert out.returncode == 0, out.stderr
    assert "&id" not in out.stdout  # plain YAML, no anchors
    docs = list(yaml.safe_load_all(out.stdout))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("ConfigMap", "agentic-tools-config"), ("Service", "agentic-tools-trainer"), ("Pod", "agentic-tools-trainer-0"),
        ("AgentEnv", "calculator"), ("Deployment", "calculator"), ("Service", "calculator"),
        ("NetworkPolicy", "calculator-deny-egress"), ("NetworkPolicy", "calculator-ingress"),
        ("Deployment", "shared-sglang"), ("Service", "shared-sglang"),
    ]
    assert {d["metadata"]["namespace"] for d in docs} == {"team-a"}
    cfg = WorkloadConfig.model_validate(yaml.safe_load(docs[0]["data"]["config.yaml"]))
    assert cfg.rollout.engine == "sglang"  # from the shared pool the job names
    assert cfg.agent_envs == {"calculator": "http://calculator.team-a.svc:8080"}
    pool_pod = docs[8]["spec"]["template"]
    assert pool_pod["metadata"]["labels"]["kuberl.io/job"] == "agentic-tools"  # bound to the job that names it


def test_a_pool_ref_missing_from_the_manifests_is_an_error_naming_it():
    out = render("decoupled-agentic.yaml")
    assert out.returncode == 1 and "shared-sglang" in out.stderr and not out.stdout


def test_an_invalid_manifest_is_refused_with_the_field(tmp_path):
    bad = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    bad["spec"]["algorithm"]["rolloutBatchSize"] = 192
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = subprocess.run([sys.executable, "-m", "kuberl.operator.cli", "render", str(path)], capture_output=True,
                         text=True)
    assert out.returncode == 1 and "rolloutBatchSize" in out.stderr
