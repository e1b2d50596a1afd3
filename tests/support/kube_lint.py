"""Four kube-linter checks, re-implemented: kube-linter itself (a Go binary) cannot be
installed here. Same semantics as kube-linter's built-in checks (stackrox/kube-linter,
pkg/builtinchecks/yamls and pkg/templates):

* ``run-as-non-root`` (template run-as-non-root): every container, init containers
  included, must have an effective runAsUser > 0, or an effective runAsNonRoot true
  without runAsUser 0; the container's securityContext overrides the pod's.
* ``no-read-only-root-fs`` (template read-only-root-fs): every container must set
  securityContext.readOnlyRootFilesystem true (pod-level has no such field).
* ``unset-memory-requirements`` (template memory-requirements, requirementsType
  ``limit``, bounds 0..0 MB): every container's memory limit must be non-zero.
* ``unset-cpu-requirements`` (template cpu-requirements, requirementsType ``request``,
  bounds 0..0 millicores): every container's cpu request must be non-zero.

kube-linter's per-container checks (the last three) look at ``containers`` only, as
here; run-as-non-root looks at init containers too. Plus one check of ours in the spirit
of ``env-var-secret`` / ``read-secret-from-env-var``: a Secret's value may reach a
container's environment only through a ``secretKeyRef`` (never ``envFrom`` a Secret, never
a literal value under a secret-looking name).

Each check returns kube-linter-style messages; empty means it passes.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from kuberl.operator.children.common import quantity_value

# kube-linter's env-var-secret name pattern, widened to the other usual credential names.
SECRET_LOOKING = re.compile(r"(?i).*(secret|password|passwd|token|access_key|api_key).*")


def quantity(value: Any) -> Decimal:
    """A resource quantity's value (unset: 0, as resource.Quantity's zero value), parsed by
    the builders' own parser."""
    if value is None:
        return Decimal(0)
    parsed = quantity_value(value)
    if parsed is None:
        raise ValueError(f"not a quantity: {value!r}")
    return parsed


def pod_spec_of(obj: dict) -> dict | None:
    """The pod spec of a Pod or of a workload's pod template (kube-linter's DeploymentLike)."""
    if obj.get("kind") == "Pod":
        return obj.get("spec") or {}
    template = (obj.get("spec") or {}).get("template")
    return (template or {}).get("spec") if template is not None else None


def _containers(spec: dict, init: bool) -> list[dict]:
    return (
        list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
        if init
        else list(spec.get("containers") or [])
    )


def run_as_non_root(spec: dict) -> list[str]:
    pod_sc = spec.get("securityContext") or {}
    out = []
    for c in _containers(spec, init=True):
        sc = c.get("securityContext") or {}
        user = sc["runAsUser"] if sc.get("runAsUser") is not None else pod_sc.get("runAsUser")
        if user is not None and user > 0:
            continue
        non_root = sc["runAsNonRoot"] if sc.get("runAsNonRoot") is not None else bool(pod_sc.get("runAsNonRoot"))
        if non_root:
            if user == 0:
                out.append(f"container {c['name']!r} is set to runAsNonRoot, but runAsUser set to 0")
            continue
        out.append(f"container {c['name']!r} is not set to runAsNonRoot")
    return out


def no_read_only_root_fs(spec: dict) -> list[str]:
    return [
        f"container {c['name']!r} does not have a read-only root file system"
        for c in _containers(spec, init=False)
        if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True
    ]


def unset_memory_requirements(spec: dict) -> list[str]:
    out = []
    for c in _containers(spec, init=False):
        limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
        if int(quantity(limit)) == 0:
            out.append(f"container {c['name']!r} has memory limit {limit or 0}")
    return out


def unset_cpu_requirements(spec: dict) -> list[str]:
    out = []
    for c in _containers(spec, init=False):
        request = ((c.get("resources") or {}).get("requests") or {}).get("cpu")
        if int(quantity(request) * 1000) == 0:
            out.append(f"container {c['name']!r} has cpu request {request or 0}")
    return out


def secrets_only_by_reference(spec: dict) -> list[str]:
    out = []
    for c in _containers(spec, init=True):
        for source in c.get("envFrom") or []:
            if "secretRef" in source:
                out.append(f"container {c['name']!r} takes its environment from Secret "
                           f"{source['secretRef'].get('name')!r}")
        for e in c.get("env") or []:
            if e.get("value") and SECRET_LOOKING.match(e["name"]):
                out.append(f"container {c['name']!r} sets {e['name']} to a literal value")
    return out


CHECKS = {
    "run-as-non-root": run_as_non_root,
    "no-read-only-root-fs": no_read_only_root_fs,
    "unset-memory-requirements": unset_memory_requirements,
    "unset-cpu-requirements": unset_cpu_requirements,
    "secrets-only-by-reference": secrets_only_by_reference,
}


def lint(obj: dict) -> dict[str, list[str]]:
    """Every check's failures for one Pod or workload object ({} when it has no pod spec or all pass)."""
    spec = pod_spec_of(obj)
    if spec is None:
        return {}
    return {name: msgs for name, check in CHECKS.items() if (msgs := check(spec))}
