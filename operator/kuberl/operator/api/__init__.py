"""The kuberl API (group kuberl.io, version v1alpha1) as pydantic models.

These models are the single source of truth: the CRDs in ``crds/`` and the reference in
``docs/api.md`` are generated from them (``kuberl crds``), and the operator parses
custom-resource bodies with them.
"""

from kuberl.operator.api.agentenv import AgentEnv, AgentEnvSpec, AgentEnvStatus
from kuberl.operator.api.common import API_VERSION, GROUP, VERSION, Condition
from kuberl.operator.api.rljob import RLJob, RLJobSpec, RLJobStatus
from kuberl.operator.api.rolloutpool import (
    RolloutPool,
    RolloutPoolSpec,
    RolloutPoolStatus,
)

RESOURCES = (RLJob, RolloutPool, AgentEnv)

__all__ = [
    "API_VERSION",
    "GROUP",
    "RESOURCES",
    "VERSION",
    "AgentEnv",
    "AgentEnvSpec",
    "AgentEnvStatus",
    "Condition",
    "RLJob",
    "RLJobSpec",
    "RLJobStatus",
    "RolloutPool",
    "RolloutPoolSpec",
    "RolloutPoolStatus",
]
