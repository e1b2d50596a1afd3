"""Every child the operator would create for a set of manifests: what `kuberl render`
prints, composed by children.desired as the controllers compose it. Pure.

A RolloutPool or AgentEnv a job names (poolRef, agentEnvs without spec) is taken from the
same manifests, as the operator would read it from the cluster; the RolloutPool and
AgentEnvs a job declares inline are printed with their own children, which their
controllers create once the job created them.
"""

from __future__ import annotations

from typing import Any

from kuberl.operator.api import AgentEnv, RLJob, RolloutPool
from kuberl.operator.children.desired import env_children, job_children, pool_children
from kuberl.operator.decisions import references as semantics
from kuberl.operator.decisions.access import AccessPolicy
from kuberl.operator.naming import pool_name_for
from kuberl.operator.settings import OperatorSettings


class RenderError(ValueError):
    """A manifest refers to something the manifests do not hold."""


def _parse(doc: dict[str, Any], namespace: str) -> RLJob | RolloutPool | AgentEnv:
    kinds = {"RLJob": RLJob, "RolloutPool": RolloutPool, "AgentEnv": AgentEnv}
    model = kinds[doc["kind"]]
    metadata = {**doc.get("metadata", {})}
    metadata.setdefault("namespace", namespace)
    return model.model_validate({"metadata": metadata, "spec": doc.get("spec") or {}})


def refusal(job: RLJob, settings: OperatorSettings, pools: dict[str, RolloutPool],
            envs: dict[str, AgentEnv]) -> str | None:
    """What the operator's semantic checks (decisions.references) would refuse the job for,
    with the pools and envs of the manifests as the ones that exist; Secrets are not read
    here (the cluster's may differ). None when the operator would create its children."""
    def existing(obj: RolloutPool | AgentEnv | None) -> semantics.Existing | None:
        return semantics.Existing(owner_uid=None, spec=obj.spec.to_wire()) if obj is not None else None

    pool_names, env_names = semantics.referenced_names(job)
    lookups = semantics.Lookups(pools={n: existing(pools.get(n)) for n in pool_names},
                                envs={n: existing(envs.get(n)) for n in env_names}, secrets=None)
    errors = semantics.semantic_errors(job, lookups, AccessPolicy.of(settings))
    return semantics.describe(errors) if errors else None


def rendered_job(job: RLJob, settings: OperatorSettings, pools: dict[str, RolloutPool], envs: dict[str, AgentEnv],
                 check: bool = True) -> list[dict[str, Any]]:
    """A job's children, and those of the pool and envs it declares inline. ``pools``/``envs``:
    the existing objects it may name; ``check``: refuse a job the operator would refuse."""
    name = job.metadata["name"]
    ref = job.spec.rollout.pool_ref if job.spec.rollout is not None else None
    if ref and job.spec.mode != "colocated" and ref not in pools:
        raise RenderError(f"RLJob {name}: spec.rollout.poolRef names RolloutPool {ref!r}, which is not among the "
                          f"manifests")
    referenced_envs = {}
    for entry in job.spec.agent_envs or []:
        if entry.spec is None:
            if entry.name not in envs:
                raise RenderError(f"RLJob {name}: spec.agentEnvs names AgentEnv {entry.name!r}, which is not among the "
                                  f"manifests")
            referenced_envs[entry.name] = envs[entry.name].spec
    refused = refusal(job, settings, pools, envs) if check else None
    if refused:
        raise RenderError(f"RLJob {name}: the operator would refuse it and create nothing: {refused}")
    children = job_children(job, settings, referenced_pool=pools[ref].spec if ref and ref in pools else None,
                            referenced_envs=referenced_envs)
    out = [children.config_map, children.service, *children.trainer_pods()]
    if children.pool is not None:
        out += [children.pool, *pool_children(RolloutPool.model_validate(children.pool), settings, bound=job).all()]
    for env in children.envs:
        out += [env, *env_children(AgentEnv.model_validate(env), settings).all()]
    return out


def render(docs: list[dict[str, Any]], settings: OperatorSettings, namespace: str = "default",
           check: bool = True) -> list[dict[str, Any]]:
    """The children of every RLJob, RolloutPool and AgentEnv in ``docs`` (other kinds are
    skipped). ``check``: refuse (RenderError) a job the operator would refuse; off, the
    children its builders make all the same (tests of every pod the builders can make)."""
    objs = [_parse(d, namespace) for d in docs if d and d.get("kind") in ("RLJob", "RolloutPool", "AgentEnv")]
    pools = {o.metadata["name"]: o for o in objs if isinstance(o, RolloutPool)}
    envs = {o.metadata["name"]: o for o in objs if isinstance(o, AgentEnv)}
    binder = {
        pool_name_for(j): j for j in objs if isinstance(j, RLJob) and pool_name_for(j) in pools
    }  # a shared pool's job
    out: list[dict[str, Any]] = []
    for o in objs:
        if isinstance(o, RLJob):
            out += rendered_job(o, settings, pools, envs, check)
        elif isinstance(o, RolloutPool):
            out += pool_children(o, settings, bound=binder.get(o.metadata["name"])).all()
        else:
            out += env_children(o, settings).all()
    return out
