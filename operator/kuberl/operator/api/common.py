"""Building blocks shared by the three kinds: base model, Kubernetes core shapes, conditions."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, WithJsonSchema

from kuberl.operator.api.constants import API_VERSION, GROUP, VERSION  # noqa: F401  (re-exported by kuberl.operator.api)
from kuberl.workloads.spec import (  # noqa: F401  (re-exported for the API modules)
    LIST_MAX,
    NAME_MAX,
    SHORT_STRING_MAX,
    URI_MAX,
    ApiModel,
    Name,
    SecretRef,
    cel,
    list_map,
)

def dns_label_rule(kind: str, becomes: str, max_length: int = 63) -> dict[str, str]:
    """A root-level CEL rule: the object's name must be a DNS-1035 label, because its
    children (Services) carry it. The API server accepts names like `my.job.v1` for custom
    resources; refusing them here beats a child the server rejects later."""
    return cel(
        f"self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= {max_length}",
        f"metadata.name must be a DNS-1035 label of at most {max_length} characters (lower-case letters, digits and "
        f"'-', "
        f"starting with a letter, no dots): a {kind}'s name becomes {becomes}",
    )


Quantity = Annotated[
    int | str,
    WithJsonSchema({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}),
]
"""A Kubernetes resource quantity such as `2`, `500m` or `16Gi`."""

Labels = dict[str, Annotated[str, Field(max_length=SHORT_STRING_MAX)]]

FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
"""An embedded Kubernetes object validated by the API server where it is finally used."""


class ResourceRequirements(ApiModel):
    """Compute resources of one container, as in a Pod spec."""

    requests: dict[str, Quantity] | None = Field(None, description="Minimum resources, e.g. {cpu: 4, memory: 32Gi}.")
    limits: dict[str, Quantity] | None = Field(None, description="Maximum resources, e.g. {nvidia.com/gpu: 8}.")


class Toleration(ApiModel):
    """A toleration copied to the pods, as in a Pod spec."""

    key: str | None = Field(None, max_length=SHORT_STRING_MAX,
                            description="Taint key the toleration applies to; empty matches all keys.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="How the key is matched against the value.")
    value: str | None = Field(None, max_length=SHORT_STRING_MAX,
                              description="Taint value to match when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(None, ge=0, description="How long a NoExecute taint is tolerated.")


class KeyRef(ApiModel):
    """One key of a Secret or ConfigMap in the object's namespace."""

    name: Name = Field(description="Name of the Secret or ConfigMap.")
    key: str = Field(min_length=1, max_length=SHORT_STRING_MAX, pattern=r"^[-._a-zA-Z0-9]+$",
                     description="Key within it.")
    optional: bool | None = Field(None,
                                  description="Start the container even when the key is "
                                              "missing (the variable is then unset).")


class EnvVarSource(ApiModel):
    """Where a variable's value comes from: a Secret key (credentials never belong in the spec) or a ConfigMap key."""

    cel_rules: ClassVar = (
        cel("has(self.secretKeyRef) != has(self.configMapKeyRef)",
            "set exactly one of secretKeyRef and configMapKeyRef"),
    )

    secret_key_ref: KeyRef | None = Field(None, description="A key of a Secret in the job's namespace.")
    config_map_key_ref: KeyRef | None = Field(None, description="A key of a ConfigMap in the job's namespace.")


class EnvVar(ApiModel):
    """An environment variable for the containers: a literal value, or one taken from a Secret or ConfigMap."""

    cel_rules: ClassVar = (
        cel("!(has(self.value) && has(self.valueFrom))",
            "set value or valueFrom, not both; put secrets in a Secret and use valueFrom.secretKeyRef", ".valueFrom"),
    )

    name: str = Field(min_length=1, max_length=SHORT_STRING_MAX, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
                      description="Variable name.")
    value: str | None = Field(None, max_length=32768,
                              description="A literal value (not for secrets: use valueFrom.secretKeyRef).")
    value_from: EnvVarSource | None = Field(None, description="Take the value from a Secret or ConfigMap key.")


class Placement(ApiModel):
    """Where pods run: node pool selection and priority."""

    node_selector: Labels | None = Field(None, description="Node labels the pods require, e.g. the GPU pool's label.")
    tolerations: list[Toleration] | None = Field(None, max_length=LIST_MAX,
                                                 description="Tolerations for tainted (e.g. GPU) nodes.")
    affinity: FreeForm | None = Field(None, description="A core/v1 Affinity, copied to the pods unchanged.")
    priority_class_name: str | None = Field(None, max_length=SHORT_STRING_MAX, description="PriorityClass of the pods.")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """One aspect of the object's state, in the standard Kubernetes shape."""

    type: str = Field(max_length=316, description="Condition type, e.g. Running or Failed.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field("", max_length=1024, description="One CamelCase word that says why.")
    message: str = Field("", max_length=32768, description="A human-readable explanation.")
    last_transition_time: str | None = Field(None, description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, ge=0,
                                            description="The .metadata.generation this condition was computed from.")
