"""Objects as the operator's watch streams last showed them: reads from memory instead of a
GET or LIST per reconcile round.

At 500 jobs a round that reads its pool, env, Deployment and pods from the API server costs
four to five requests, and the sweeper runs a round per object every few seconds: several
hundred requests a second for nothing, and a takeover by a standby that re-asserts every
child. kopf keeps one watch per kind (`controllers.watched` registers an index per kind)
and updates the index on every event; this class answers reads from those indices.

What is read here may be milliseconds behind the API server. Every decision taken on it is
idempotent (create-or-get, deleting a pod already gone, a status patch of changed fields);
the one read that must not be behind, the object being reconciled, is checked against the
resourceVersion this process last saw (`runtime.current`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kuberl.operator.adapters.kube import plural
from kuberl.operator.api.constants import API_VERSION, LABEL_ENV, LABEL_JOB, LABEL_POOL

# The kinds the operator reads and writes; each is one kopf index, named after its plural.
WATCHED_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "Pod"), ("v1", "Service"), ("v1", "ConfigMap"), ("apps/v1", "Deployment"),
    ("networking.k8s.io/v1", "NetworkPolicy"), (API_VERSION, "RLJob"), (API_VERSION, "RolloutPool"),
    (API_VERSION, "AgentEnv"),
)
INDEX_IDS: dict[tuple[str, str], str] = {kind: f"watched_{plural(*kind)}" for kind in WATCHED_KINDS}
# Pods are listed by one of these labels (naming.trainer_selector, pool_selector, env_selector).
SELECTOR_LABELS = (LABEL_JOB, LABEL_POOL, LABEL_ENV)

_KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "generation", "labels", "annotations",
                  "ownerReferences", "deletionTimestamp")


def plain(obj: Any) -> Any:
    """A kopf body (mapping views) as plain dicts and lists, safe to keep and mutate."""
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def slim(kind: str, body: Mapping) -> dict[str, Any]:
    """What the operator reads of an object, so 5,000 pods do not cost 5,000 full bodies.

    Custom objects are kept whole (their controllers read every field); a Deployment keeps
    its replica count and status; a Pod its phase, conditions and message; the rest only
    their metadata (enough to tell whether the manifest asserted last is still there)."""
    if kind in ("RLJob", "RolloutPool", "AgentEnv"):
        return plain(body)
    meta = body.get("metadata") or {}
    kept: dict[str, Any] = {"metadata": {k: plain(meta[k]) for k in _KEPT_METADATA if k in meta}}
    if kind == "Deployment":
        kept["spec"] = {"replicas": (body.get("spec") or {}).get("replicas")}
        kept["status"] = plain(body.get("status") or {})
    elif kind == "Pod":
        status = body.get("status") or {}
        kept["status"] = {k: plain(status[k]) for k in ("phase", "conditions", "message") if k in status}
    return kept


def index_keys(kind: str, body: Mapping) -> dict[tuple, dict[str, Any]]:
    """The keys one object is found under: its name, and for pods each selector label it carries."""
    meta = body.get("metadata") or {}
    namespace, value = meta.get("namespace"), slim(kind, body)
    keys: dict[tuple, dict[str, Any]] = {("name", namespace, meta.get("name")): value}
    if kind == "Pod":
        labels = meta.get("labels") or {}
        keys |= {("label", namespace, label, labels[label]): value for label in SELECTOR_LABELS if label in labels}
    return keys


class WatchCache:
    """Reads served from kopf's indices (bound at start-up; `controllers.startup`)."""

    def __init__(self) -> None:
        self._indices: dict[str, Mapping[tuple, Iterable[dict[str, Any]]]] = {}

    def bind(self, indices: Mapping[str, Any]) -> None:
        """Take the index of each kind from what kopf hands a start-up handler (by index id)."""
        self._indices = {kind: indices[index_id] for (_, kind), index_id in INDEX_IDS.items() if index_id in indices}

    def _index(self, api_version: str, kind: str) -> Mapping[tuple, Iterable[dict[str, Any]]]:
        if (api_version, kind) not in INDEX_IDS:
            raise KeyError(f"{api_version} {kind} is not watched by the operator (adapters.watch_cache.INDEX_IDS)")
        try:
            return self._indices[kind]
        except KeyError:
            raise RuntimeError(
                f"the watch cache of {kind} is not bound: the operator's start-up handler binds it"
            ) from None

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as last watched, None when the watch has not seen it (or saw it deleted)."""
        store = self._index(api_version, kind).get(("name", namespace, name))
        return next(iter(store), None) if store else None

    def all(self, api_version: str, kind: str) -> list[dict[str, Any]]:
        """Every object of a kind the watch holds (meant for the custom kinds: the sweeper's
        rounds; pods are read by label, never all at once)."""
        index = self._index(api_version, kind)
        return [obj for key in list(index) if key[0] == "name" for obj in index.get(key) or ()]

    def list(self, api_version: str, kind: str, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        """Objects matching every label of `selector`; it must name one of SELECTOR_LABELS."""
        label = next((k for k in SELECTOR_LABELS if k in selector), None)
        if label is None:
            raise KeyError(f"selector {dict(selector)} names none of the indexed labels {SELECTOR_LABELS}")
        store = self._index(api_version, kind).get(("label", namespace, label, selector[label])) or ()
        return [obj for obj in store
                if all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]
