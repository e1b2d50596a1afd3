"""The sections of an RLJob spec that workload processes read, as pydantic models.

The operator's API (kuberl.operator.api) composes these into the RLJob kind and generates
the CRD from them; workload processes receive the same sections in their rendered config
(kuberl.workloads.config). Defining them here keeps one source of truth while the
dependency points the allowed way (operator -> workloads, never back).

One module per part: `base` (the API model, bounds, CEL helpers), `data` (model, datasets,
curriculum, rewards), `algorithm` (the RL algorithm, staleness, evaluation) and `runtime`
(parallelism, buffer, weight store, checkpoints, loggers, run policy). Importers use this
package's names.
"""

from kuberl.workloads.spec.base import (
    NAME_MAX,
    SHORT_STRING_MAX,
    URI_MAX,
    LIST_MAX,
    ApiModel,
    Name,
    cel,
    list_map,
    SecretRef,
)
from kuberl.workloads.spec.data import (
    HubCache,
    ModelSpec,
    Dataset,
    DifficultyRange,
    StageSwitch,
    CurriculumStage,
    CurriculumSpec,
    VerifierReward,
    python_entry_point_problem,
    PythonReward,
    RewardSpec,
)
from kuberl.workloads.spec.algorithm import (
    StalenessHandling,
    OffPolicyCorrection,
    EvaluationSpec,
    AlgorithmSpec,
)
from kuberl.workloads.spec.runtime import (
    Parallelism,
    BufferSpec,
    WeightStoreSpec,
    CheckpointSpec,
    SecretKeyRef,
    TensorBoardSpec,
    WandbSpec,
    ObservabilitySpec,
    RunPolicy,
)

__all__ = [
    "NAME_MAX",
    "SHORT_STRING_MAX",
    "URI_MAX",
    "LIST_MAX",
    "ApiModel",
    "Name",
    "cel",
    "list_map",
    "SecretRef",
    "HubCache",
    "ModelSpec",
    "Dataset",
    "DifficultyRange",
    "StageSwitch",
    "CurriculumStage",
    "CurriculumSpec",
    "VerifierReward",
    "python_entry_point_problem",
    "PythonReward",
    "RewardSpec",
    "StalenessHandling",
    "OffPolicyCorrection",
    "EvaluationSpec",
    "AlgorithmSpec",
    "Parallelism",
    "BufferSpec",
    "WeightStoreSpec",
    "CheckpointSpec",
    "SecretKeyRef",
    "TensorBoardSpec",
    "WandbSpec",
    "ObservabilitySpec",
    "RunPolicy",
]
