"""What each kind's children should be: one composition per kind, applied by its controller
and printed by `kuberl render` (children.render), so what a user reads is what runs. Pure.

A job's children are its ConfigMap (the rendered WorkloadConfig), the trainer gang's
rendezvous Service and pods, and the RolloutPool and AgentEnvs it declares inline (their
own children are theirs: `pool_children`, `env_children`); a RolloutPool's are its
Deployment and Service; an AgentEnv's its Deployment, Service and NetworkPolicies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kuberl.operator.api import AgentEnv, RLJob, RolloutPool
from kuberl.operator.api.agentenv import AgentEnvSpec
from kuberl.operator.api.rolloutpool import RolloutPoolSpec
from kuberl.operator.children.agentenv import (
    agent_env_deployment,
    agent_env_ingress_policy,
    agent_env_network_policy,
    agent_env_service,
    deny_egress_policy_name,
    inline_agent_envs,
)
from kuberl.operator.children.rollout import (
    credential_secrets,
    inline_rollout_pool,
    rollout_deployment,
    rollout_service,
)
from kuberl.operator.children.trainer import trainer_pod, trainer_service
from kuberl.operator.children.workload_config import job_config_map, job_workload_config
from kuberl.operator.settings import OperatorSettings

Manifest = dict[str, Any]


@dataclass(frozen=True)
class JobChildren:
    """An RLJob's children. Trainer pods are built on demand (`trainer_pod`): the controller
    creates only the ones its gang decision names, at the gang's current generation."""

    job: RLJob
    settings: OperatorSettings
    config_map: Manifest
    service: Manifest
    pool: Manifest | None  # the RolloutPool declared inline, owned by the job
    envs: tuple[Manifest, ...]  # the AgentEnvs declared inline, owned by the job

    def trainer_pod(self, index: int, generation: int) -> Manifest:
        pod = trainer_pod(self.job, self.job.metadata["namespace"], index, generation, self.settings)
        _inherit([pod], self.job)
        return pod

    def trainer_pods(self, generation: int = 0) -> list[Manifest]:
        return [self.trainer_pod(i, generation) for i in range(self.job.spec.trainer.replicas)]


@dataclass(frozen=True)
class PoolChildren:
    deployment: Manifest
    service: Manifest

    def all(self) -> list[Manifest]:
        return [self.deployment, self.service]


@dataclass(frozen=True)
class EnvChildren:
    deployment: Manifest
    service: Manifest
    deny_egress: Manifest | None  # None when spec.sandbox.denyEgress is off
    deny_egress_name: str  # also when off: an earlier policy of that name is then deleted
    ingress: Manifest

    def all(self) -> list[Manifest]:
        return [self.deployment, self.service, *([self.deny_egress] if self.deny_egress else []), self.ingress]


def _inherit(children: list[Manifest], parent: RLJob | RolloutPool | AgentEnv) -> None:
    """The parent's labels on each child (and a Deployment's pods) where the child sets none
    of its own, as kopf.adopt labels a child when it is created; composed here so that what
    `kuberl render` prints and what a later template update writes carry them too."""
    labels = parent.metadata.get("labels") or {}
    for child in children:
        targets = [child["metadata"]]
        if child["kind"] == "Deployment":
            targets.append(child["spec"]["template"]["metadata"])
        for meta in targets:
            meta["labels"] = {**labels, **(meta.get("labels") or {})}


def job_children(job: RLJob, settings: OperatorSettings, *, referenced_pool: RolloutPoolSpec | None = None,
                 referenced_envs: dict[str, AgentEnvSpec | None] | None = None) -> JobChildren:
    """``referenced_pool``/``referenced_envs``: the specs of the existing RolloutPool and
    AgentEnvs the job names (poolRef, agentEnvs without spec), as read from the cluster."""
    namespace = job.metadata["namespace"]
    config = job_workload_config(job, referenced_pool=referenced_pool, referenced_envs=referenced_envs or {})
    children = JobChildren(job=job, settings=settings, config_map=job_config_map(job, settings, config),
                           service=trainer_service(job, namespace, settings),
                           pool=inline_rollout_pool(job, namespace, settings),
                           envs=tuple(inline_agent_envs(job, namespace, settings)))
    _inherit([children.config_map, children.service, *children.envs, *([children.pool] if children.pool else [])], job)
    return children


def pool_children(pool: RolloutPool, settings: OperatorSettings, bound: RLJob | None = None) -> PoolChildren:
    """``bound``: the job the pool serves (its model, tokenizer and credentials reach the engines)."""
    namespace = pool.metadata["namespace"]
    model = bound.spec.model if bound is not None else None
    deployment = rollout_deployment(
        pool, namespace, settings, bound_job=bound.metadata["name"] if bound is not None else None,
        model_source=model.source if model else None, tokenizer=model.tokenizer if model else None,
        hub_cache=model.hub_cache if model else None,
        **credential_secrets(bound.spec.to_wire() if bound is not None else None))
    children = PoolChildren(deployment=deployment, service=rollout_service(pool, namespace, settings))
    _inherit(children.all(), pool)
    return children


def env_children(env: AgentEnv, settings: OperatorSettings) -> EnvChildren:
    namespace = env.metadata["namespace"]
    children = EnvChildren(deployment=agent_env_deployment(env, namespace, settings),
                           service=agent_env_service(env, namespace, settings),
                           deny_egress=agent_env_network_policy(env, namespace, settings),
                           deny_egress_name=deny_egress_policy_name(env.metadata["name"]),
                           ingress=agent_env_ingress_policy(env, namespace, settings))
    _inherit(children.all(), env)
    return children
