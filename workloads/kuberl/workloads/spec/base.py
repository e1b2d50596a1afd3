"""What every spec section shares: the camelCase API model, the bounds, names, CEL rules, list maps."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

# Bounds that keep the API server's CEL cost estimate small and names usable as labels.
NAME_MAX = 63
SHORT_STRING_MAX = 253
URI_MAX = 2048
LIST_MAX = 64


class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    # CEL rules (x-kubernetes-validations) attached to this object's schema: each is a
    # dict with `rule`, `message` and optionally `fieldPath`/`reason`. Kept on the class
    # so the generator and the docs see them next to the fields they constrain.
    cel_rules: ClassVar[tuple[dict[str, str], ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: cs.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        target = handler.resolve_ref_schema(json_schema)
        if cls.cel_rules:
            target["x-kubernetes-validations"] = [dict(rule) for rule in cls.cel_rules]
        return json_schema

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest: camelCase, unset fields omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


Name = Annotated[
    str,
    Field(min_length=1, max_length=NAME_MAX, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
]
"""A DNS-1123 label: what Kubernetes accepts as the name of a Service or a label value."""


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, str]:
    """One x-kubernetes-validations entry."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def list_map(*keys: str) -> dict[str, Any]:
    """Schema hints for a list whose items are identified by `keys` (server-side apply merges by them)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


class SecretRef(ApiModel):
    """A Secret in the same namespace."""

    name: Name = Field(description="Name of the Secret.")
