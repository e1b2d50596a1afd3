"""Generate CustomResourceDefinitions from the API models (pure: models in, dicts out).

Pydantic emits JSON Schema (draft 2020-12) with `$ref`s and `anyOf: [X, null]` for
optional fields. Kubernetes wants a *structural* OpenAPI v3 schema: everything inlined,
no nulls, boolean `exclusiveMinimum`, and its own `x-kubernetes-*` extensions. This module
is that translation and nothing else.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema

from kuberl.operator.api import API_VERSION, GROUP, RESOURCES, VERSION

CATEGORY = "kuberl"

PRINTER_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "RLJob": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase."},
        {"name": "Mode", "type": "string", "jsonPath": ".spec.mode", "description": "colocated or decoupled."},
        {"name": "Step", "type": "integer", "jsonPath": ".status.step", "description": "Optimizer steps done."},
        {"name": "Progress", "type": "string", "jsonPath": ".status.progressPercent",
         "description": "Percent of maxSteps.", "priority": 1},
        {"name": "Reward", "type": "string", "jsonPath": ".status.reward.mean",
         "description": "Mean reward of the latest step."},
        {"name": "Policy", "type": "integer", "jsonPath": ".status.policyVersion",
         "description": "Newest published policy version."},
        {"name": "Rollout", "type": "string", "jsonPath": ".status.rollout.summary",
         "description": "Ready/desired rollout pods."},
        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "description": "Trainer gang restarts.",
         "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "RolloutPool": [
        {"name": "Engine", "type": "string", "jsonPath": ".spec.engine.type", "description": "Inference engine."},
        {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas", "description": "Desired pods."},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas", "description": "Ready pods."},
        {"name": "Min", "type": "integer", "jsonPath": ".spec.minReplicas", "priority": 1},
        {"name": "Max", "type": "integer", "jsonPath": ".spec.maxReplicas", "priority": 1},
        {"name": "Job", "type": "string", "jsonPath": ".status.boundJob", "description": "RLJob served."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "AgentEnv": [
        {"name": "Task", "type": "string", "jsonPath": ".spec.task"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}

SCALE_SUBRESOURCE = {
    "RolloutPool": {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
}


class _DefaultsFromFactories(GenerateJsonSchema):
    """Emit the factory's value as the default of nested objects built by a default_factory.

    Pydantic leaves factory defaults out of the schema. The full value rather than `{}`:
    the API server checks every default against the CEL rules of its object, and a rule
    such as `self.minReplicas <= self.maxReplicas` cannot evaluate on `{}`.
    """

    def default_schema(self, schema):  # type: ignore[override]
        if "default_factory" in schema and not schema.get("default_factory_takes_data"):
            value = schema["default_factory"]()
            inner = self.generate_inner(schema["schema"])
            if isinstance(value, BaseModel):
                return {**inner, "default": value.model_dump(mode="json", by_alias=True, exclude_none=True)}
            if value in ([], {}):
                return inner
        return super().default_schema(schema)


_DROP = {"title", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Translate one pydantic JSON-Schema node into a structural OpenAPI v3 node."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    siblings = {k: v for k, v in node.items() if k not in ("$ref", "anyOf", "allOf")}

    if "$ref" in node:
        target = _structural(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return _merge(target, _structural(siblings, defs))
    if "allOf" in node and len(node["allOf"]) == 1:
        return _merge(_structural(node["allOf"][0], defs), _structural(siblings, defs))
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [b for b in node["anyOf"] if b != {"type": "null"}]
        if len(branches) == 1:
            merged = _merge(_structural(branches[0], defs), _structural(siblings, defs))
            return merged
        raise ValueError(f"cannot express a union of {len(branches)} types structurally: {node}")

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "default" and value is None:
            continue
        if key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields instead
        if key == "const":
            out["enum"] = [value]
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
            continue
        if key in ("properties",):
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
            continue
        out[key] = _structural(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A referenced schema plus the field-level keys (description, default, bounds) next to the $ref."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if key == "x-kubernetes-validations":
            merged[key] = merged.get(key, []) + value
        else:
            merged[key] = value
    return merged


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural openAPIV3Schema of one resource kind."""
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_DefaultsFromFactories)
    schema = _structural(raw, raw.get("$defs", {}))
    props = schema["properties"]
    # apiVersion/kind are checked by the API server itself; they stay plain strings.
    props["apiVersion"] = {"type": "string", "description": f"APIVersion of this object: {API_VERSION}."}
    props["kind"] = {"type": "string", "description": f"Kind of this object: {model.kind_info['kind']}."}
    # Only `type: object` is allowed here: the API server refuses anything else on metadata.
    props["metadata"] = {"type": "object"}
    schema["required"] = ["spec"] if "spec" in raw.get("required", []) else []
    if not schema["required"]:
        schema.pop("required")
    return schema


def crd(model: type[BaseModel]) -> dict[str, Any]:
    """A complete apiextensions.k8s.io/v1 CustomResourceDefinition for one kind."""
    info = model.kind_info
    kind = info["kind"]
    subresources: dict[str, Any] = {"status": {}}
    if kind in SCALE_SUBRESOURCE:
        subresources["scale"] = SCALE_SUBRESOURCE[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info['plural']}.{GROUP}",
            "annotations": {"kuberl.io/generated-by": "kuberl crds (from kuberl.operator.api); do not edit"},
            "labels": {"app.kubernetes.io/part-of": "kuberl"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": info["plural"],
                "singular": info["singular"],
                "shortNames": info["short_names"],
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": PRINTER_COLUMNS[kind],
                    "schema": {"openAPIV3Schema": openapi_schema(model)},
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD for every kind."""
    return {f"{GROUP}_{m.kind_info['plural']}.yaml": crd(m) for m in RESOURCES}
