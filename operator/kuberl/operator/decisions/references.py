"""Semantic validation of an RLJob: what the CRD schema and its CEL rules cannot know.

The schema sees one object; these rules look at the objects it refers to (pools, agent
environments) and at combinations the trainer would only discover minutes later on a GPU
(parallel sizes that do not fit a node). Pure: the handler passes what it looked up.
Each error names the field, so the Failed/InvalidSpec condition says what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kuberl.operator.api import RLJob
from kuberl.operator.api.rolloutpool import RolloutPoolSpec
from kuberl.operator.decisions.job_shape import default_pool_spec, trainer_ranks
from kuberl.operator.decisions.access import AccessPolicy, endpoint_errors, sandbox_errors, secret_errors
from kuberl.operator.decisions.support import (
    cluster_errors,
    engine_errors,
    reward_errors,
    source_errors,
    trainer_errors,
)
from kuberl.operator.naming import pool_name_for


@dataclass(frozen=True)
class Existing:
    """An object that already exists under a name the job uses."""

    owner_uid: str | None  # uid of its controller owner, if any
    spec: dict[str, Any] = field(default_factory=dict)
    bound_job: str | None = None  # RolloutPool: the job it serves now


@dataclass(frozen=True)
class Lookups:
    pools: dict[str, Existing | None]  # every pool name the job uses -> what exists
    envs: dict[str, Existing | None]  # every agent-env name the job uses -> what exists
    active_jobs: frozenset[str] = frozenset()  # unfinished RLJobs in the namespace
    # Secret name -> its keys (None: missing); None as a whole: Secrets are not read here.
    secrets: dict[str, frozenset[str] | None] | None = field(default_factory=dict)


def referenced_names(job: RLJob) -> tuple[list[str], list[str]]:
    """(pool names, env names) the job needs looked up."""
    pool = pool_name_for(job)
    return ([pool] if pool else []), [e.name for e in job.spec.agent_envs or []]


def _engine_fits(spec: RolloutPoolSpec, where: str) -> list[tuple[str, str]]:
    if spec.engine.type == "sglang" and spec.gpus_per_replica < spec.engine.tensor_parallel_size:
        return [(f"{where}.gpusPerReplica",
                 f"an SGLang engine with tensorParallelSize={spec.engine.tensor_parallel_size} needs at least that "
                 f"many GPUs per replica, got {spec.gpus_per_replica}")]
    return []


def semantic_errors(job: RLJob, lookups: Lookups, policy: AccessPolicy = AccessPolicy()) -> list[tuple[str, str]]:
    """(field path, message) for every problem; empty when the job can run."""
    errors: list[tuple[str, str]] = []
    name = job.metadata.get("name", "")
    uid = job.metadata.get("uid")
    spec = job.spec
    trainer = spec.trainer
    par = trainer.parallelism

    if trainer.gpus_per_replica > 0 and par.tensor > trainer.gpus_per_replica:
        errors.append(("spec.trainer.parallelism.tensor",
                       f"tensor-parallel size {par.tensor} exceeds gpusPerReplica {trainer.gpus_per_replica}; tensor "
                       f"parallelism must stay within one node"))
    _, world = trainer_ranks(job)
    model_parallel = par.tensor * par.pipeline * par.context
    if world % model_parallel == 0:
        data_parallel = world // model_parallel
        if data_parallel % par.expert != 0:
            errors.append(("spec.trainer.parallelism.expert",
                           f"expert-parallel size {par.expert} must divide the data-parallel size {data_parallel} "
                           f"(ranks {world} / tensor x pipeline x context {model_parallel})"))

    errors += trainer_errors(job) + source_errors(job) + reward_errors(job) + cluster_errors(job)
    pool_name = pool_name_for(job)
    if pool_name is not None:
        existing = lookups.pools.get(pool_name)
        if spec.rollout is not None and spec.rollout.pool_ref:
            if existing is None:
                errors.append(("spec.rollout.poolRef", f"RolloutPool {pool_name!r} does not exist in this namespace"))
            else:
                referenced = RolloutPoolSpec.model_validate(existing.spec)
                errors += _engine_fits(referenced, "spec.rollout.poolRef") + engine_errors(job, referenced,
                                                                                           "spec.rollout.poolRef")
                busy = existing.bound_job
                if busy and busy != name and busy in lookups.active_jobs:
                    errors.append(("spec.rollout.poolRef",
                                   f"RolloutPool {pool_name!r} is serving RLJob {busy!r}; a pool serves one job at a "
                                   f"time"))
        else:
            if existing is not None and existing.owner_uid != uid:
                errors.append(("spec.rollout.template",
                               f"a RolloutPool named {pool_name!r} already exists and is not owned by this job"))
            template = (
                spec.rollout.template
                if spec.rollout is not None and spec.rollout.template is not None
                else default_pool_spec(job)
            )
            errors += _engine_fits(template, "spec.rollout.template") + engine_errors(job, template,
                                                                                      "spec.rollout.template")

    for i, entry in enumerate(spec.agent_envs or []):
        existing = lookups.envs.get(entry.name)
        if entry.spec is None and existing is None:
            errors.append((f"spec.agentEnvs[{i}].name",
                           f"AgentEnv {entry.name!r} does not exist in this namespace (set spec to create it inline)"))
        if entry.spec is not None and existing is not None and existing.owner_uid != uid:
            errors.append((f"spec.agentEnvs[{i}].name",
                           f"an AgentEnv named {entry.name!r} already exists and is not owned by this job"))
        if entry.spec is not None:
            errors += sandbox_errors(entry.spec, f"spec.agentEnvs[{i}].spec", policy)
    if lookups.secrets is not None:
        errors += secret_errors(job, lookups.secrets)
    errors += endpoint_errors(job, policy)
    return errors


def describe(errors: list[tuple[str, str]]) -> str:
    return "; ".join(f"{path}: {message}" for path, message in errors)
