"""One kopf index per kind the operator reads (adapters.watch_cache): kopf watches each and
calls these on every event, dropping an object from its index when it is deleted.

Children are told apart by the managed-by label every child carries (children.common), so
the operator never holds other workloads' pods in memory.

The index functions are coroutines: kopf runs a synchronous handler on its thread pool,
and a take-over lists about 10,000 objects at 500 jobs, each a thread hop for a few
dictionary operations."""

from __future__ import annotations

import time
from typing import Any

import kopf

from kuberl.operator.adapters import kopf_reactor
from kuberl.operator.adapters.kube import plural
from kuberl.operator.adapters.watch_cache import INDEX_IDS, index_keys
from kuberl.operator.api.constants import GROUP, LABEL_MANAGED_BY, MANAGED_BY_LABEL_VALUE, VERSION
from kuberl.operator.controllers.runtime import RT

_OURS = {LABEL_MANAGED_BY: MANAGED_BY_LABEL_VALUE}


def _register(api_version: str, kind: str, resource_plural: str, children: bool) -> None:
    group, _, version = api_version.rpartition("/")

    async def index(body: kopf.Body, **_: Any) -> dict[tuple, dict[str, Any]]:
        if not children:
            # When the watch last showed this object: the sweeper runs rounds only on
            # objects shown since this replica began serving (controllers.sweeper).
            RT.last_watched[body["metadata"]["uid"]] = time.monotonic()
            kopf_reactor.remember_event_queue()
        return index_keys(kind, body)

    index.__name__ = INDEX_IDS[(api_version, kind)]
    resource = (group, version, resource_plural) if group else (version, resource_plural)
    kopf.index(*resource, id=index.__name__, **({"labels": _OURS} if children else {}))(index)


for (_api_version, _kind) in INDEX_IDS:
    _register(_api_version, _kind, plural(_api_version, _kind), children=not _api_version.startswith(f"{GROUP}/"))


@kopf.on.event(GROUP, VERSION, "rolloutpools")
@kopf.on.event(GROUP, VERSION, "agentenvs")
async def forget_deleted(type: str, uid: str, **_: Any) -> None:  # noqa: A002 (kopf's keyword)
    """Drop what this process kept about a deleted pool or env (they have no finaliser to do
    it; a job's finaliser does it for the job)."""
    if type == "DELETED":
        RT.forget(uid)
