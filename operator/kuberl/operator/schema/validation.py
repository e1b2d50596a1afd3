"""Offline validation of kuberl manifests against the generated CRD schemas.

It applies what the API server applies on create, in the same order: schema defaults,
structural checks (types, enums, bounds, required and unknown fields), then the CEL
rules, evaluated with cel-python. Messages name the field by path the way the API server
does, so `kuberl validate` gives the answer `kubectl apply` would, without a cluster.
Transition rules (those that read `oldSelf`) only apply to updates and are skipped.
"""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from typing import Any

from kuberl.operator.api import API_VERSION
from kuberl.operator.schema.crdgen import all_crds
from kuberl.operator.schema.errors import FieldError
from kuberl.operator.schema.object_meta import decode_errors, meta_errors, name_of

__all__ = ["FieldError", "ManifestInvalid", "apply_defaults", "validate", "validation_errors"]

# The fields a custom resource has besides its schema's: the API server decodes them itself.
OBJECT_FIELDS = ("apiVersion", "kind", "metadata")
# What a field the schema does not declare gets: with fieldValidation=Strict the server
# refuses those while decoding, before any other check.
UNDECLARED = "field not declared in schema"


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
            errors.append(FieldError(path,
                                     f"Invalid value: {value!r}: should be at least {schema['minLength']} chars long"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(FieldError(path, f"Invalid value: {value!r}: should match '{schema['pattern']}'"))
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(FieldError(path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items"))
        if len(value) < schema.get("minItems", 0):
            errors.append(FieldError(path,
                                     f"Invalid value: {len(value)}: should have at least {schema['minItems']} items"))
        keys = schema.get("x-kubernetes-list-map-keys")
        seen: set[str] = set()
        for i, item in enumerate(value):
            errors += _structural_errors(item, schema.get("items", {}), f"{path}[{i}]")
            if keys and isinstance(item, dict):
                key = tuple(item.get(k) for k in keys)
                hashable = json.dumps(key, sort_keys=True, default=str)  # a key of the wrong type may be a dict
                if hashable in seen:
                    errors.append(FieldError(f"{path}[{i}]", f"Duplicate value: {dict(zip(keys, key))}"))
                seen.add(hashable)
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
                errors.append(FieldError(sub, UNDECLARED))
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


def _cel_errors(value: Any, schema: dict[str, Any], path: str, cel: Any = None) -> list[FieldError]:
    """`cel` is `value` already converted for CEL (a part of its parent's conversion), or None:
    each subtree is converted at most once, however many rules above it read it; converting
    per rule made a large `x-kubernetes-preserve-unknown-fields` value cost a walk per rule."""
    import celpy

    errors: list[FieldError] = []
    rules = [r for r in schema.get("x-kubernetes-validations",
                                   []) if "oldSelf" not in r["rule"]]  # oldSelf: update only
    if rules and cel is None:
        cel = celpy.json_to_cel(_as_cel_input(value, schema))
    for rule in rules:
        where = path + rule.get("fieldPath", "") if rule.get("fieldPath") else path
        try:
            result = _program(rule["rule"]).evaluate({"self": cel})
        except celpy.CELEvalError as e:
            result = e
        if isinstance(result, celpy.CELEvalError):
            # The server refuses an object a rule cannot be evaluated on (a missing key), at the
            # rule's own place and without its fieldPath.
            errors.append(FieldError(path or "<root>", f"Invalid value: {result.args[0] if result.args else result} "
                                                        f"evaluating rule: {rule['message']}"))
        elif result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            errors.append(FieldError(where or "<root>", f"Invalid value: {rule['message']}"))
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name in value:
                sub = None if cel is None else cel[celpy.celtypes.StringType(name)]
                errors += _cel_errors(value[name], prop, _join(path, name), sub)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += _cel_errors(item, schema["items"], f"{path}[{i}]", None if cel is None else cel[i])
    return errors


def drop_nulls(value: Any, schema: dict[str, Any]) -> Any:
    """The API server prunes null object fields that are not `nullable` before it validates
    (and defaults them): a `field: null` in YAML is the field left out."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        return {k: drop_nulls(v, props.get(k, extra)) for k, v in value.items()
                if v is not None or props.get(k, extra).get("nullable")}
    if isinstance(value, list):
        return [drop_nulls(v, schema.get("items", {})) for v in value]
    return value


def validation_errors(manifest: dict[str, Any]) -> list[FieldError]:
    """Every reason the API server would refuse to create `manifest` (empty when valid)."""
    if not isinstance(manifest, dict):
        return [FieldError("<root>", f"a manifest must be a mapping (apiVersion, kind, metadata, spec), "
                                     f"not {'null' if manifest is None else type(manifest).__name__}")]
    kind = manifest.get("kind")
    schemas = _schemas()
    if manifest.get("apiVersion") != API_VERSION or kind not in schemas:
        return [FieldError("apiVersion/kind",
                           f"expected apiVersion {API_VERSION} and kind one of {sorted(schemas)}, got "
                           f"{manifest.get('apiVersion')}/{kind}")]
    schema = schemas[kind]
    # Decoding comes first (fieldValidation=Strict): unknown fields anywhere, a metadata that
    # is no ObjectMeta. The server refuses those before it looks at anything else.
    declared = set(schema["properties"]) | set(OBJECT_FIELDS)
    unknown = [FieldError(k, f'unknown field "{k}"') for k in manifest if k not in declared]
    decoding = unknown + decode_errors(manifest.get("metadata"))
    body = drop_nulls({k: v for k, v in manifest.items() if k in declared and k != "status"}, schema)
    metadata = dict(body.get("metadata") or {}) if isinstance(body.get("metadata"), dict) else {}
    if name_of(metadata) and not metadata.get("name"):
        metadata["name"] = name_of(metadata)
    body["metadata"] = metadata
    errors = _structural_errors(body, {**schema, "properties": {k: v for k,
                                                                v in schema["properties"].items() if k != "status"}},
                                "")
    unknown_fields = [e for e in errors if e.message == UNDECLARED]
    if decoding or unknown_fields:
        return decoding + unknown_fields
    errors = meta_errors(metadata) + errors
    if errors:
        return errors  # the API server stops before CEL when the structure is wrong
    return _cel_errors(apply_defaults(body, schema), schema, "")


def validate(manifest: dict[str, Any]) -> dict[str, Any]:
    """Return `manifest` with schema defaults applied, or raise ManifestInvalid."""
    errors = validation_errors(manifest)
    if errors:
        meta = manifest.get("metadata") if isinstance(manifest, dict) else None
        raise ManifestInvalid(str(manifest.get("kind") if isinstance(manifest, dict) else None),
                              str(meta.get("name") or meta.get("generateName") if isinstance(meta, dict) else None),
                              errors)
    return apply_defaults(manifest, _schemas()[manifest["kind"]])
