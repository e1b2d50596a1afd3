"""Offline validation of kuberl manifests against the generated CRD schemas.

It applies what the API server applies on create, in the same order: schema defaults,
structural checks (types, enums, bounds, required and unknown fields), then the CEL
rules, evaluated with cel-python. Messages name the field by path the way the API server
does, so `kuberl validate` gives the answer `kubectl apply` would, without a cluster.
Transition rules (those that read `oldSelf`) only apply to updates and are skipped.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from kuberl.operator.api import API_VERSION
from kuberl.operator.schema.crdgen import all_crds


@dataclass(frozen=True)
class FieldError:
    """One rejected field."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ManifestInvalid(ValueError):
    """A manifest the API server would reject; `errors` names every offending field."""

    def __init__(self, kind: str, name: str, errors: list[FieldError]):
        self.errors = errors
        listing = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{kind} {name!r} is invalid:\n{listing}")


@lru_cache(maxsize=1)
def _schemas() -> dict[str, dict[str, Any]]:
    return {
        c["spec"]["names"]["kind"]: c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for c in all_crds().values()
    }


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Fill schema defaults recursively, as the API server does before validation."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, prop in schema["properties"].items():
            if name not in out and "default" in prop:
                out[name] = copy.deepcopy(prop["default"])
            if name in out:
                out[name] = apply_defaults(out[name], prop)
        return out
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: apply_defaults(v, schema["additionalProperties"]) for k, v in value.items()}
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(v, schema["items"]) for v in value]
    return value


def _type_ok(value: Any, schema: dict[str, Any]) -> str | None:
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
        return None if ok else "must be an integer or a string"
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    if kind in checks and not checks[kind](value):
        return f"must be of type {kind}"
    return None


def _structural_errors(value: Any, schema: dict[str, Any], path: str) -> list[FieldError]:
    problem = _type_ok(value, schema)
    if problem:
        return [FieldError(path, f"Invalid value: {value!r}: {problem}")]
    errors: list[FieldError] = []
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(f'"{v}"' for v in schema["enum"])
        errors.append(FieldError(path, f"Unsupported value: {value!r}: supported values: {allowed}"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema:
            low = schema["minimum"]
            if value < low or (schema.get("exclusiveMinimum") and value == low):
                rel = "greater than" if schema.get("exclusiveMinimum") else "greater than or equal to"
                errors.append(FieldError(path, f"Invalid value: {value}: should be {rel} {low}"))
        if "maximum" in schema:
            high = schema["maximum"]
            if value > high or (schema.get("exclusiveMaximum") and value == high):
                rel = "less than" if schema.get("exclusiveMaximum") else "less than or equal to"
                errors.append(FieldError(path, f"Invalid value: {value}: should be {rel} {high}"))
    if isinstance(value, str):
        if len(value) > schema.get("maxLength", len(value)):
            errors.append(FieldError(path, f"Too long: may not be more than {schema['maxLength']} bytes"))
        if len(value) < schema.get("minLength", 0):
            errors.append(FieldError(path, f"Invalid value: {value!r}: should be at least {schema['minLength']} chars long"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(FieldError(path, f"Invalid value: {value!r}: should match '{schema['pattern']}'"))
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(FieldError(path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items"))
        if len(value) < schema.get("minItems", 0):
            errors.append(FieldError(path, f"Invalid value: {len(value)}: should have at least {schema['minItems']} items"))
        keys = schema.get("x-kubernetes-list-map-keys")
        seen: set[tuple] = set()
        for i, item in enumerate(value):
            errors += _structural_errors(item, schema.get("items", {}), f"{path}[{i}]")
            if keys and isinstance(item, dict):
                key = tuple(item.get(k) for k in keys)
                if key in seen:
                    errors.append(FieldError(f"{path}[{i}]", f"Duplicate value: {dict(zip(keys, key))}"))
                seen.add(key)
    if isinstance(value, dict):
        props = schema.get("properties")
        for name in schema.get("required", []):
            if name not in value:
                errors.append(FieldError(_join(path, name), "Required value"))
        for name, item in value.items():
            sub = _join(path, name)
            if props is not None and name in props:
                errors += _structural_errors(item, props[name], sub)
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += _structural_errors(item, schema["additionalProperties"], sub)
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields") and path:
                errors.append(FieldError(sub, "field not declared in schema"))
    return errors


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _as_cel_input(value: Any, schema: dict[str, Any]) -> Any:
    """JSON → the types CEL sees: numbers typed `number` become doubles, as in the API server."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        return {k: _as_cel_input(v, props.get(k, extra)) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_cel_input(v, schema.get("items", {})) for v in value]
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@lru_cache(maxsize=256)
def _program(rule: str):
    import celpy  # imported lazily: only offline validation needs it

    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel_errors(value: Any, schema: dict[str, Any], path: str) -> list[FieldError]:
    import celpy

    errors: list[FieldError] = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue  # transition rule: only evaluated on update
        activation = {"self": celpy.json_to_cel(_as_cel_input(value, schema))}
        result = _program(rule["rule"]).evaluate(activation)
        if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            where = path + rule.get("fieldPath", "") if rule.get("fieldPath") else path
            errors.append(FieldError(where or "<root>", f"Invalid value: {rule['message']}"))
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name in value:
                errors += _cel_errors(value[name], prop, _join(path, name))
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += _cel_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def validation_errors(manifest: dict[str, Any]) -> list[FieldError]:
    """Every reason the API server would refuse to create `manifest` (empty when valid)."""
    if not isinstance(manifest, dict):
        return [FieldError("<root>", "a manifest must be a mapping")]
    kind = manifest.get("kind")
    schemas = _schemas()
    if manifest.get("apiVersion") != API_VERSION or kind not in schemas:
        return [FieldError("apiVersion/kind", f"expected apiVersion {API_VERSION} and kind one of {sorted(schemas)}, got {manifest.get('apiVersion')}/{kind}")]
    if not isinstance(manifest.get("metadata", {}).get("name"), str):
        return [FieldError("metadata.name", "Required value")]
    schema = schemas[kind]
    body = {k: v for k, v in manifest.items() if k != "status"}
    errors = _structural_errors(body, {**schema, "properties": {k: v for k, v in schema["properties"].items() if k != "status"}}, "")
    if errors:
        return errors  # the API server stops before CEL when the structure is wrong
    return _cel_errors(apply_defaults(body, schema), schema, "")


def validate(manifest: dict[str, Any]) -> dict[str, Any]:
    """Return `manifest` with schema defaults applied, or raise ManifestInvalid."""
    errors = validation_errors(manifest)
    if errors:
        raise ManifestInvalid(str(manifest.get("kind")), str(manifest.get("metadata", {}).get("name")), errors)
    return apply_defaults(manifest, _schemas()[manifest["kind"]])
