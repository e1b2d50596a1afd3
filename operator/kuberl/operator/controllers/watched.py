"""One kopf index per kind the operator reads (adapters.watch_cache): kopf watches each and
calls these on every event, dropping an object from its index when it is deleted.

Children are told apart by the managed-by label every child carries (children.common), so
the operator never holds other workloads' pods in memory."""

from __future__ import annotations

from typing import Any

import kopf

from kuberl.operator.adapters.kube import plural
from kuberl.operator.adapters.watch_cache import INDEX_IDS, index_keys
from kuberl.operator.api.constants import GROUP, LABEL_MANAGED_BY, MANAGED_BY_LABEL_VALUE

_OURS = {LABEL_MANAGED_BY: MANAGED_BY_LABEL_VALUE}


def _register(api_version: str, kind: str, resource_plural: str, children: bool) -> None:
    group, _, version = api_version.rpartition("/")

    def index(body: kopf.Body, **_: Any) -> dict[tuple, dict[str, Any]]:
        return index_keys(kind, body)

    index.__name__ = INDEX_IDS[(api_version, kind)]
    resource = (group, version, resource_plural) if group else (version, resource_plural)
    kopf.index(*resource, id=index.__name__, **({"labels": _OURS} if children else {}))(index)


for (_api_version, _kind) in INDEX_IDS:
    _register(_api_version, _kind, plural(_api_version, _kind), children=not _api_version.startswith(f"{GROUP}/"))
