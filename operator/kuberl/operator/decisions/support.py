"""Combinations the API allows but the workload processes do not run (yet): refused up front.

The CRD schema and CEL see one field at a time; these rules know what the trainer and the
rollout agent can do with a combination. Each returns (field path, message with the fix),
like `references.semantic_errors`, which adds them to the job's InvalidSpec condition;
`kuberl run` refuses the same. Pure.
"""

from __future__ import annotations

from urllib.parse import urlparse

from kuberl.operator.api import RLJob
from kuberl.operator.api.rolloutpool import RolloutPoolSpec
from kuberl.workloads.spec import python_entry_point_problem

MODEL_SCHEMES = ("builtin", "file", "s3", "hf")
DATASET_SCHEMES = ("builtin", "file", "s3", "hf")


def trainer_errors(job: RLJob) -> list[tuple[str, str]]:
    spec, trainer = job.spec, job.spec.trainer
    par = trainer.parallelism
    errors: list[tuple[str, str]] = []
    if trainer.backend == "megatron":
        for field, size in (("context", par.context), ("expert", par.expert)):
            if size > 1:
                errors.append((f"spec.trainer.parallelism.{field}",
                               f"{field} parallelism {size}: the megatron trainer runs tensor, pipeline and data "
                               f"parallel; set {field} to 1"))
        if spec.algorithm.entropy_coef > 0:
            errors.append(("spec.algorithm.entropyCoef",
                           "the megatron trainer computes no entropies (vocab-parallel entropy is not implemented): "
                           "set entropyCoef 0, or use trainer.backend torch"))
    elif par.tensor * par.pipeline * par.context * par.expert > 1:
        errors.append(("spec.trainer.parallelism",
                       "the torch trainer is one process: set every parallelism size to 1, or use backend megatron"))
    return errors


def source_errors(job: RLJob) -> list[tuple[str, str]]:
    """Sources whose scheme no process reads."""
    spec = job.spec
    checks = [("spec.model.source", spec.model.source, MODEL_SCHEMES)]
    if spec.model.tokenizer:
        checks.append(("spec.model.tokenizer", spec.model.tokenizer, MODEL_SCHEMES))
    checks += [(f"spec.datasets[{i}].source", d.source, DATASET_SCHEMES) for i, d in enumerate(spec.datasets)]
    if spec.evaluation is not None:
        checks += [(f"spec.evaluation.datasets[{i}].source", d.source, DATASET_SCHEMES) for i,
                   d in enumerate(spec.evaluation.datasets)]
    errors = []
    for path, source, schemes in checks:
        scheme = urlparse(source).scheme or "file"
        if scheme not in schemes:
            errors.append((path, f"{source!r}: the scheme must be one of {', '.join(s + '://' for s in schemes)}"))
    return errors


def reward_errors(job: RLJob) -> list[tuple[str, str]]:
    """Reward plug-ins the rollout agent would refuse to call."""
    reward = job.spec.reward
    if reward.type == "python" and reward.python is not None:
        problem = python_entry_point_problem(reward.python.entry_point)
        if problem:
            return [("spec.reward.python.entryPoint", problem)]
    return []


def cluster_errors(job: RLJob) -> list[tuple[str, str]]:
    """What runs under `kuberl run` (the machine's venvs) but not in a cluster's pods."""
    trainer = job.spec.trainer
    if job.spec.mode == "colocated" and trainer.colocated_engine == "sglang" and trainer.gpus_per_replica == 0:
        return [("spec.trainer.colocatedEngine",
                 "SGLang beside the trainer runs on GPU trainer pods (the colocated image carries SGLang's CUDA "
                 "build); "
                 "with gpusPerReplica 0 set colocatedEngine torch, or run the job on one machine with `kuberl run`")]
    return []


def longest_response(job: RLJob) -> int:
    stages = job.spec.curriculum.stages if job.spec.curriculum is not None else []
    return max([job.spec.algorithm.max_response_length, *(s.max_response_length or 0 for s in stages)])


def engine_errors(job: RLJob, pool: RolloutPoolSpec, where: str) -> list[tuple[str, str]]:
    """What the job asks of the rollout engine that the pool's engine cannot give."""
    errors = []
    context = pool.engine.context_length
    needed = job.spec.algorithm.max_prompt_length + longest_response(job)
    if context is not None and needed > context:
        errors.append((f"{where}.engine.contextLength",
                       f"the engine's context of {context} tokens cannot hold algorithm.maxPromptLength "
                       f"({job.spec.algorithm.max_prompt_length}) plus the longest maxResponseLength "
                       f"({longest_response(job)}): "
                       f"raise contextLength to at least {needed} or lower those lengths"))
    return errors


def unsupported(job: RLJob, pool: RolloutPoolSpec | None = None,
                where: str = "spec.rollout.template") -> list[tuple[str, str]]:
    """Every combination of ``job`` (and the pool it generates with) that would not run as written."""
    return (
        trainer_errors(job)
        + source_errors(job)
        + reward_errors(job)
        + (engine_errors(job, pool, where) if pool is not None else [])
    )
