"""Every child the operator would create for a set of manifests, through the controllers'
own builders: what `kuberl render` prints. Pure.

A job's children are its ConfigMap (the rendered WorkloadConfig), the trainer gang's
rendezvous Service and first-generation pods, and the RolloutPool and AgentEnvs it owns;
a RolloutPool's are its Deployment and Service; an AgentEnv's its Deployment, Service and
NetworkPolicy. A RolloutPool or AgentEnv a job names (poolRef, agentEnvs without spec) is
taken from the same manifests, as the operator would read it from the cluster.
"""

from __future__ import annotations

from typing import Any

from kuberl.operator.api import AgentEnv, RLJob, RolloutPool
from kuberl.operator.children.agentenv import agent_env_children, inline_agent_envs
from kuberl.operator.children.rollout import (
    credential_secrets,
    inline_rollout_pool,
    rollout_deployment,
    rollout_service,
)
from kuberl.operator.children.trainer import trainer_gang, trainer_service
from kuberl.operator.children.workload_config import job_config_map, job_workload_config
from kuberl.operator.settings import OperatorSettings


class RenderError(ValueError):
    """A manifest refers to something the manifests do not hold."""


def _parse(doc: dict[str, Any], namespace: str) -> RLJob | RolloutPool | AgentEnv:
    kinds = {"RLJob": RLJob, "RolloutPool": RolloutPool, "AgentEnv": AgentEnv}
    model = kinds[doc["kind"]]
    metadata = {**doc.get("metadata", {})}
    metadata.setdefault("namespace", namespace)
    return model.model_validate({"metadata": metadata, "spec": doc.get("spec") or {}})


def pool_children(pool: RolloutPool, settings: OperatorSettings, bound: RLJob | None = None) -> list[dict[str, Any]]:
    namespace = pool.metadata["namespace"]
    model = bound.spec.model if bound is not None else None
    return [
        rollout_deployment(pool, namespace, settings, bound_job=bound.metadata["name"] if bound is not None else None,
                           model_source=model.source if model else None, tokenizer=model.tokenizer if model else None,
                           hub_cache=model.hub_cache if model else None,
                           **credential_secrets(bound.spec.to_wire() if bound is not None else None)),
        rollout_service(pool, namespace, settings),
    ]


def job_children(job: RLJob, settings: OperatorSettings, pools: dict[str, RolloutPool], envs: dict[str, AgentEnv]) -> list[dict[str, Any]]:
    """A job's children, and those of the pool and envs it owns. ``pools``/``envs``: the
    existing objects it may name."""
    namespace, name = job.metadata["namespace"], job.metadata["name"]
    ref = job.spec.rollout.pool_ref if job.spec.rollout is not None else None
    if ref and job.spec.mode != "colocated" and ref not in pools:
        raise RenderError(f"RLJob {name}: spec.rollout.poolRef names RolloutPool {ref!r}, which is not among the manifests")
    referenced_envs = {}
    for entry in job.spec.agent_envs or []:
        if entry.spec is None:
            if entry.name not in envs:
                raise RenderError(f"RLJob {name}: spec.agentEnvs names AgentEnv {entry.name!r}, which is not among the manifests")
            referenced_envs[entry.name] = envs[entry.name].spec
    config = job_workload_config(job, referenced_pool=pools[ref].spec if ref and ref in pools else None,
                                 referenced_envs=referenced_envs)
    out = [job_config_map(job, settings, config), trainer_service(job, namespace, settings), *trainer_gang(job, namespace, 0, settings)]
    inline_pool = inline_rollout_pool(job, namespace, settings)
    if inline_pool is not None:
        out.append(inline_pool)
        out += pool_children(RolloutPool.model_validate(inline_pool), settings, bound=job)
    for env in inline_agent_envs(job, namespace, settings):
        out.append(env)
        out += agent_env_children(AgentEnv.model_validate(env), namespace, settings)
    return out


def render(docs: list[dict[str, Any]], settings: OperatorSettings, namespace: str = "default") -> list[dict[str, Any]]:
    """The children of every RLJob, RolloutPool and AgentEnv in ``docs`` (other kinds are skipped)."""
    objs = [_parse(d, namespace) for d in docs if d and d.get("kind") in ("RLJob", "RolloutPool", "AgentEnv")]
    pools = {o.metadata["name"]: o for o in objs if isinstance(o, RolloutPool)}
    envs = {o.metadata["name"]: o for o in objs if isinstance(o, AgentEnv)}
    binder = {j.spec.rollout.pool_ref: j for j in objs if isinstance(j, RLJob) and j.spec.rollout is not None and j.spec.rollout.pool_ref}
    out: list[dict[str, Any]] = []
    for o in objs:
        if isinstance(o, RLJob):
            out += job_children(o, settings, pools, envs)
        elif isinstance(o, RolloutPool):
            out += pool_children(o, settings, bound=binder.get(o.metadata["name"]))
        else:
            out += agent_env_children(o, o.metadata["namespace"], settings)
    return out
