"""The RLJob spec -> workload config mapping that the operator and `kuberl run` share."""

from __future__ import annotations

from pathlib import Path

import pytest

from kuberl.workloads.config import WorkloadConfig, load_config
from tests.support.objects import example_spec, workload_config_for

ROOT = Path(__file__).resolve().parents[3]


def _spec(name: str) -> dict:
    return example_spec(name)


def test_tiny_job_maps_to_a_torch_runtime():
    cfg = workload_config_for(_spec("tiny-cpu.yaml"), "tiny-arithmetic", nats_url="nats://127.0.0.1:4222", s3_endpoint="http://127.0.0.1:8333")
    assert cfg.rollout.engine == "torch" and cfg.trainer_backend == "torch"
    assert cfg.buffer.url == "nats://127.0.0.1:4222"
    assert cfg.weight_store.endpoint == "http://127.0.0.1:8333"
    assert cfg.max_off_policy_steps == 1
    assert cfg.algorithm.group_size == 8 and cfg.algorithm.learning_rate == pytest.approx(5e-4)
    assert cfg.weight_prefix == "kuberl/default/tiny-arithmetic"
    assert cfg.checkpoint.uri == "s3://kuberl/kuberl/default/tiny-arithmetic/checkpoints"


def test_colocated_defaults_to_on_policy():
    spec = _spec("colocated-math.yaml")
    spec.pop("maxOffPolicySteps")
    cfg = workload_config_for(spec, "math", "ml")
    assert cfg.mode == "colocated" and cfg.max_off_policy_steps == 0
    assert cfg.curriculum.stages[1].samples_per_prompt == 32


def test_round_trip_through_yaml(tmp_path, monkeypatch):
    cfg = workload_config_for(_spec("decoupled-agentic.yaml"), "agentic", "ml")
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    monkeypatch.setenv("KUBERL_CONFIG", str(path))
    again = load_config()
    assert again == cfg
    assert isinstance(again, WorkloadConfig) and again.agent_envs["calculator"].startswith("http://")


def test_missing_config_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="KUBERL_CONFIG"):
        load_config(tmp_path / "nope.yaml")
