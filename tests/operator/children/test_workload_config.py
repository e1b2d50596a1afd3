"""The RLJob spec -> workload config mapping that the operator and `kuberl run` share."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kuberl.operator.schema.validation import validate
from kuberl.workloads.config import WorkloadConfig, config_from_rljob, load_config

ROOT = Path(__file__).resolve().parents[3]


def _spec(name: str) -> dict:
    return validate(yaml.safe_load((ROOT / "examples" / name).read_text()))["spec"]


def test_tiny_job_maps_to_a_torch_runtime():
    cfg = config_from_rljob("default", "tiny-arithmetic", _spec("tiny-cpu.yaml"), nats_url="nats://127.0.0.1:4222", s3_endpoint="http://127.0.0.1:8333")
    assert cfg.rollout.engine == "torch" and cfg.trainer_backend == "torch"
    assert cfg.buffer.url == "nats://127.0.0.1:4222"
    assert cfg.weight_store.endpoint == "http://127.0.0.1:8333"
    assert cfg.max_off_policy_steps == 1
    assert cfg.algorithm.group_size == 8 and cfg.algorithm.learning_rate == pytest.approx(5e-4)
    assert cfg.weight_prefix == "kuberl/default/tiny-arithmetic"
    assert cfg.checkpoint.uri == "s3://kuberl/kuberl/default/tiny-arithmetic/checkpoints"
    assert cfg.job.slug == "default_tiny-arithmetic"


def test_colocated_defaults_to_on_policy():
    spec = _spec("colocated-math.yaml")
    spec.pop("maxOffPolicySteps")
    cfg = config_from_rljob("ml", "math", spec)
    assert cfg.mode == "colocated" and cfg.max_off_policy_steps == 0
    assert cfg.curriculum.stages[1].samples_per_prompt == 32


def test_round_trip_through_yaml(tmp_path, monkeypatch):
    cfg = config_from_rljob("ml", "agentic", _spec("decoupled-agentic.yaml"), agent_env_urls={"calculator": "http://calculator.ml.svc:8080"})
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    monkeypatch.setenv("KUBERL_CONFIG", str(path))
    again = load_config()
    assert again == cfg
    assert isinstance(again, WorkloadConfig) and again.agent_envs["calculator"].startswith("http://")


def test_missing_config_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="KUBERL_CONFIG"):
        load_config(tmp_path / "nope.yaml")
