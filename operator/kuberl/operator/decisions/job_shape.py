"""What a job runs, from its spec alone: the trainer's ranks and the rollout pool it
generates with. Pure; the children builders, the semantic checks and `kuberl run` ask here."""

from __future__ import annotations

from kuberl.operator.api import RLJob
from kuberl.operator.api.rolloutpool import RolloutPoolSpec


def trainer_ranks(job: RLJob) -> tuple[int, int]:
    """(processes per pod, world size): one rank per GPU, or one per pod on CPU."""
    per_pod = max(job.spec.trainer.gpus_per_replica, 1)
    return per_pod, per_pod * job.spec.trainer.replicas


def default_pool_spec(job: RLJob) -> RolloutPoolSpec:
    """The pool a decoupled job gets when it names none: CPU torch engine for torch trainers."""
    if job.spec.trainer.backend == "torch":
        return RolloutPoolSpec.model_validate({"engine": {"type": "torch"}, "gpusPerReplica": 0})
    return RolloutPoolSpec()


def generating_pool(job: RLJob, referenced: RolloutPoolSpec | None = None) -> RolloutPoolSpec | None:
    """The RolloutPool spec a job generates with: None in colocated mode (the trainer
    generates); else the referenced pool's (spec.rollout.poolRef), the inline template,
    or the default pool."""
    if job.spec.mode == "colocated":
        return None
    rollout = job.spec.rollout
    if rollout is not None and rollout.pool_ref:
        return referenced
    if rollout is not None and rollout.template is not None:
        return rollout.template
    return default_pool_spec(job)
