"""What the API server checks in a custom resource's metadata, offline. Pure.

The CRD schema says nothing about `metadata`: the API server decodes it as an ObjectMeta
(unknown fields and wrong types refused while decoding, with fieldValidation=Strict) and
then validates the name (a DNS-1123 subdomain for custom resources), the labels and the
annotations. Messages follow the server's wording and name the field the same way.
"""

from __future__ import annotations

import re
from typing import Any

from kuberl.operator.schema.errors import FieldError

# ObjectMeta's JSON fields (k8s.io/apimachinery/pkg/apis/meta/v1 ObjectMeta).
OBJECT_META_FIELDS = {
    "name": str, "generateName": str, "namespace": str, "selfLink": str, "uid": str, "resourceVersion": str,
    "generation": int, "creationTimestamp": (str, type(None)), "deletionTimestamp": str,
    "deletionGracePeriodSeconds": int, "labels": dict, "annotations": dict, "ownerReferences": list,
    "finalizers": list, "managedFields": list,
}
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
SUBDOMAIN_MAX = 253
QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
NAME_PART_MAX = 63
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
ANNOTATIONS_TOTAL_MAX = 256 * 1024
NAME_RULE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
             "and must start and end with an alphanumeric character")


def decode_errors(metadata: Any) -> list[FieldError]:
    """What decoding `metadata` as an ObjectMeta refuses: not an object, unknown fields, wrong types."""
    if metadata is None:
        return []
    if not isinstance(metadata, dict):
        return [FieldError("metadata", f"Invalid value: {metadata!r}: must be an object (ObjectMeta)")]
    errors = []
    for key, value in metadata.items():
        expected = OBJECT_META_FIELDS.get(key)
        if expected is None:
            errors.append(FieldError(f"metadata.{key}", f'unknown field "metadata.{key}"'))
        elif value is not None and (not isinstance(value, expected) or isinstance(value, bool) and expected is int):
            errors.append(FieldError(f"metadata.{key}", f"Invalid value: {value!r}: wrong type"))
        elif key in ("labels", "annotations") and value is not None:
            errors += [FieldError(f"metadata.{key}", f"Invalid value: {v!r}: values must be strings")
                       for v in value.values() if not isinstance(v, str)][:1]
        elif key == "finalizers" and value is not None:
            errors += [FieldError("metadata.finalizers", f"Invalid value: {v!r}: must be a string")
                       for v in value if not isinstance(v, str)][:1]
    return errors


def name_of(metadata: dict[str, Any] | None) -> str | None:
    """The name the object is created under: its name, or what the server makes of generateName."""
    metadata = metadata or {}
    if metadata.get("name"):
        return metadata["name"]
    if metadata.get("generateName"):
        return metadata["generateName"] + "x7k2q"  # the server appends five random characters
    return None


def _qualified_name_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > SUBDOMAIN_MAX or not DNS1123_SUBDOMAIN.fullmatch(prefix)):
        return "prefix part a lowercase RFC 1123 subdomain"
    if not name or len(name) > NAME_PART_MAX or not QUALIFIED_NAME.fullmatch(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                f"alphanumeric character, at most {NAME_PART_MAX} characters")
    return None


def meta_errors(metadata: dict[str, Any] | None) -> list[FieldError]:
    """The server's ObjectMeta validation of a decoded `metadata` (see `decode_errors`)."""
    metadata = metadata or {}
    errors = []
    name = name_of(metadata)
    if name is None:
        errors.append(FieldError("metadata.name", "Required value: name or generateName is required"))
    elif len(name) > SUBDOMAIN_MAX:
        errors.append(FieldError("metadata.name",
                                 f"Invalid value: {name!r}: must be no more than {SUBDOMAIN_MAX} characters"))
    elif not DNS1123_SUBDOMAIN.fullmatch(name):
        errors.append(FieldError("metadata.name", f"Invalid value: {name!r}: {NAME_RULE}"))
    for key, value in (metadata.get("labels") or {}).items():
        problem = _qualified_name_problem(key)
        if problem:
            errors.append(FieldError("metadata.labels", f"Invalid value: {key!r}: {problem}"))
        if len(value) > NAME_PART_MAX or not LABEL_VALUE.fullmatch(value):
            errors.append(FieldError("metadata.labels",
                                     f"Invalid value: {value!r}: a valid label must be an empty string or "
                                     f"consist of alphanumeric characters, '-', '_' or '.' (at most {NAME_PART_MAX})"))
    annotations = metadata.get("annotations") or {}
    for key in annotations:
        problem = _qualified_name_problem(key.lower())
        if problem:
            errors.append(FieldError("metadata.annotations", f"Invalid value: {key!r}: {problem}"))
    total = sum(len(k) + len(v) for k, v in annotations.items())
    if total > ANNOTATIONS_TOTAL_MAX:
        errors.append(FieldError("metadata.annotations", f"Too long: must have at most {ANNOTATIONS_TOTAL_MAX} bytes"))
    return errors
