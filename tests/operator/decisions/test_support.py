"""Combinations the API allows and the processes do not run are refused with the field and the fix."""

from __future__ import annotations

import pytest

from kuberl.operator.api.rolloutpool import RolloutPoolSpec
from kuberl.operator.decisions.references import Lookups, semantic_errors
from kuberl.operator.decisions.support import engine_errors, unsupported
from kuberl.operator.local.runner import LocalRun
from kuberl.operator.local.supervisor import RunError
from tests.support.objects import example, job


def test_every_example_runs_as_written():
    for name in ("tiny-cpu.yaml", "tiny-cpu-colocated.yaml", "tiny-megatron-sglang.yaml", "colocated-math.yaml",
                 "decoupled-agentic.yaml"):
        assert unsupported(job(name)) == [], name


def test_megatron_refuses_what_it_does_not_compute_or_shard():
    doc = example("tiny-megatron-sglang.yaml", "RLJob")["spec"]
    j = job("tiny-megatron-sglang.yaml", algorithm={**doc["algorithm"], "entropyCoef": 0.01},
            trainer={**doc["trainer"], "parallelism": {"tensor": 1, "context": 2}})
    errors = dict(unsupported(j))
    assert "set entropyCoef 0, or use trainer.backend torch" in errors["spec.algorithm.entropyCoef"]
    assert "set context to 1" in errors["spec.trainer.parallelism.context"]
    assert set(errors) <= {p for p,
                           _ in semantic_errors(j, Lookups({}, {}))}  # the operator's InvalidSpec says the same


def test_the_torch_trainer_is_one_process():
    j = job("tiny-cpu.yaml",
            trainer={"backend": "torch", "replicas": 1, "gpusPerReplica": 0, "parallelism": {"pipeline": 2}})
    assert dict(unsupported(j))["spec.trainer.parallelism"].startswith("the torch trainer is one process")


def test_sources_the_processes_cannot_read():
    j = job("tiny-cpu.yaml", model={"source": "gs://models/tiny", "dtype": "float32"},
            datasets=[{"name": "sums", "source": "ftp://x/train.jsonl"}])
    errors = dict(unsupported(j))
    assert (
        "builtin://, file://, s3://, hf://" in errors["spec.model.source"]
        and "ftp://" in errors["spec.datasets[0].source"]
    )


def test_colocated_sglang_on_cpu_runs_locally_not_in_a_cluster():
    """`kuberl run` starts SGLang's CPU build from its venv; the cluster's colocated image is SGLang's CUDA build."""
    j = job("tiny-megatron-sglang-colocated.yaml")
    assert j.spec.trainer.gpus_per_replica == 0 and unsupported(j) == []
    errors = dict(semantic_errors(j, Lookups({}, {})))
    assert "with gpusPerReplica 0 set colocatedEngine torch" in errors["spec.trainer.colocatedEngine"]
    assert "spec.trainer.colocatedEngine" not in dict(semantic_errors(job(), Lookups({}, {})))  # colocated-math: GPUs


@pytest.mark.parametrize("entry_point", ["os:system", "builtins:eval", "subprocess:check_output"])
def test_standard_library_rewards_are_refused_by_the_operator_and_kuberl_run(entry_point):
    j = job("tiny-cpu.yaml", reward={"type": "python", "python": {"entryPoint": entry_point}})
    message = dict(unsupported(j))["spec.reward.python.entryPoint"]
    assert "standard library" in message and "your own module" in message
    assert dict(semantic_errors(j, Lookups({}, {})))["spec.reward.python.entryPoint"] == message
    ok = job("tiny-cpu.yaml", reward={"type": "python", "python": {"entryPoint": "my_rewards:score"}})
    assert "spec.reward.python.entryPoint" not in dict(unsupported(ok))


def test_context_length_must_hold_prompt_and_response():
    j = job("tiny-cpu.yaml")
    pool = RolloutPoolSpec.model_validate({"engine": {"type": "sglang", "contextLength": 128}, "gpusPerReplica": 1})
    assert engine_errors(j, pool, "spec.rollout.template") == []
    j.spec.algorithm.max_response_length = 120
    [(path, message)] = engine_errors(j, pool, "spec.rollout.template")
    assert path == "spec.rollout.template.engine.contextLength" and "raise contextLength to at least 136" in message


def test_kuberl_run_refuses_before_starting_anything(tmp_path):
    import yaml

    manifest = tmp_path / "job.yaml"
    doc = example("tiny-megatron-sglang.yaml", "RLJob")
    doc["spec"]["rollout"]["template"]["engine"]["contextLength"] = 128
    doc["spec"]["algorithm"]["maxResponseLength"] = 120
    manifest.write_text(yaml.safe_dump(doc))
    with pytest.raises(RunError,
                       match=r"spec.rollout.template.engine.contextLength: the engine's context of 128 tokens"):
        LocalRun(manifest, output=tmp_path / "out").run()
    assert not (tmp_path / "out" / "servers").exists()
