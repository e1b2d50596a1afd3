"""Semantic validation of RLJobs beyond the CRD schema (pure)."""

from __future__ import annotations

from kuberl.operator.decisions.references import Existing, Lookups, semantic_errors
from tests.support.objects import job


def fields(errors):
    return [f for f, _ in errors]


def test_examples_are_valid_when_their_references_exist():
    assert semantic_errors(job(), Lookups({}, {})) == []
    agentic = job("decoupled-agentic.yaml")
    pool = Existing(None, {"engine": {"type": "sglang", "tensorParallelSize": 2}, "gpusPerReplica": 2})
    assert semantic_errors(agentic, Lookups({"shared-sglang": pool}, {"calculator": None})) == []
    assert semantic_errors(job("tiny-cpu.yaml"), Lookups({"tiny-arithmetic-rollout": None}, {})) == []


def test_missing_pool_ref_and_busy_pool():
    agentic = job("decoupled-agentic.yaml")
    errors = semantic_errors(agentic, Lookups({"shared-sglang": None}, {}))
    assert fields(errors) == ["spec.rollout.poolRef"] and "does not exist" in errors[0][1]
    busy = Existing(None, {"gpusPerReplica": 1}, bound_job="other")
    assert fields(semantic_errors(agentic, Lookups({"shared-sglang": busy}, {},
                                                   frozenset({"other"})))) == ["spec.rollout.poolRef"]
    assert semantic_errors(agentic, Lookups({"shared-sglang": busy}, {}, frozenset())) == []


def test_missing_and_foreign_agent_envs():
    agentic = job("decoupled-agentic.yaml", agentEnvs=[{"name": "calculator"}])
    pool = Existing(None, {"gpusPerReplica": 1})
    assert fields(semantic_errors(agentic,
                                  Lookups({"shared-sglang": pool}, {"calculator": None}))) == ["spec.agentEnvs[0].name"]
    inline = job("decoupled-agentic.yaml")
    foreign = Existing("someone-else")
    errors = semantic_errors(inline, Lookups({"shared-sglang": pool}, {"calculator": foreign}))
    assert fields(errors) == ["spec.agentEnvs[0].name"] and "not owned" in errors[0][1]
    assert semantic_errors(inline, Lookups({"shared-sglang": pool}, {"calculator": Existing("uid-1")})) == []


def test_parallelism_against_gpus():
    j = job(trainer={"replicas": 2, "gpusPerReplica": 4, "parallelism": {"tensor": 8}, "placement": {}})
    assert fields(semantic_errors(j, Lookups({}, {}))) == ["spec.trainer.parallelism.tensor"]
    j = job(trainer={"replicas": 1, "gpusPerReplica": 8, "parallelism": {"tensor": 2, "expert": 3}})
    # Expert parallelism must divide the data-parallel size; and the megatron trainer does not run it.
    errors = semantic_errors(j, Lookups({}, {}))
    assert fields(errors) == ["spec.trainer.parallelism.expert"] * 2 and "set expert to 1" in errors[1][1]


def test_engine_needs_its_gpus_and_foreign_inline_pool():
    tiny = job("tiny-cpu.yaml")
    tiny.spec.rollout.template.engine.type = "sglang"
    assert fields(semantic_errors(tiny, Lookups({}, {}))) == ["spec.rollout.template.gpusPerReplica"]
    tiny = job("tiny-cpu.yaml")
    assert fields(semantic_errors(tiny,
                                  Lookups({"tiny-arithmetic-rollout": Existing("x")}, {}))) == ["spec.rollout.template"]
