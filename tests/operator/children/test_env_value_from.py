"""Environment variables from Secrets and ConfigMaps reach the containers as references, never values."""

from __future__ import annotations

from kuberl.operator.api import AgentEnv, RolloutPool
from kuberl.operator.children.agentenv import agent_env_deployment
from kuberl.operator.children.rollout import rollout_deployment
from kuberl.operator.children.trainer import trainer_pod
from kuberl.operator.settings import OperatorSettings
from tests.support.objects import job

ENV = [
    {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
    {"name": "OPTIONAL_KEY", "valueFrom": {"secretKeyRef": {"name": "extra", "key": "k", "optional": True}}},
    {"name": "RUN_NOTE", "valueFrom": {"configMapKeyRef": {"name": "notes", "key": "note", "optional": False}}},
    {"name": "PLAIN", "value": "1"},
]
WIRE = {
    "HF_TOKEN": {"valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
    "OPTIONAL_KEY": {"valueFrom": {"secretKeyRef": {"name": "extra", "key": "k", "optional": True}}},
    "RUN_NOTE": {"valueFrom": {"configMapKeyRef": {"name": "notes", "key": "note", "optional": False}}},
    "PLAIN": {"value": "1"},
}


def _user_vars(container: dict) -> dict:
    return {e["name"]: {k: v for k, v in e.items() if k != "name"} for e in container["env"] if e["name"] in WIRE}


def test_value_from_reaches_trainer_rollout_and_env_containers():
    settings = OperatorSettings()
    base = job()
    spec = base.spec.to_wire()
    spec["trainer"]["env"] = ENV
    j = base.model_validate({"metadata": base.metadata, "spec": spec})
    assert _user_vars(trainer_pod(j, "team-a", 0, 0, settings)["spec"]["containers"][0]) == WIRE

    pool = RolloutPool.model_validate({"metadata": {"name": "p", "namespace": "team-a"},
                                       "spec": {"agent": {"env": ENV}}})
    agent = next(
        c
        for c in rollout_deployment(pool, "team-a", settings)["spec"]["template"]["spec"]["containers"]
        if c["name"] == "agent"
    )
    assert _user_vars(agent) == WIRE

    env = AgentEnv.model_validate({"metadata": {"name": "e", "namespace": "team-a"}, "spec": {"env": ENV}})
    container = agent_env_deployment(env, "team-a", settings)["spec"]["template"]["spec"]["containers"][0]
    assert _user_vars(container) == WIRE
