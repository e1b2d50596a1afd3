"""An in-memory cluster that records what the controllers write, for tests that run one
reconcile round in-process. It stands in for the operator's `Kube`, `WatchCache`,
`NatsBridge` and `kopf.event`; the real ones are exercised against a real API server and
NATS by tests/cluster and tests/operator/adapters.

Writes are answered as an API server would for what the rounds use: create (409 →
the existing object), merge patch (a status patch touches only status), delete, reads.
Every write and every Event goes to one ordered log, so a test can check their order.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kuberl.operator.api.constants import API_VERSION


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, null removes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@dataclass
class Write:
    verb: str  # create | patch | delete | event
    kind: str
    name: str
    body: Any = None  # the object sent (create), the patch, the Event's (type, reason, message)
    subresource: str | None = None


@dataclass
class RecordingCluster:
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # (kind, namespace, name)
    log: list[Write] = field(default_factory=list)
    _versions: itertools.count = field(default_factory=lambda: itertools.count(1))

    # -- setting the scene ----------------------------------------------------------------

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as the API server would hold it (uid, resourceVersion, generation)."""
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.setdefault("uid", f"uid-{meta['namespace']}-{obj['kind']}-{meta['name']}")
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._versions))
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    def created(self) -> list[dict[str, Any]]:
        """Every object the rounds created, as sent, in order."""
        return [w.body for w in self.log if w.verb == "create"]

    # -- Kube -----------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, api_version: str, kind: str, namespace: str,
             selector: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (k, ns, _), o in self.objects.items() if k == kind and ns == namespace
                and all((o["metadata"].get("labels") or {}).get(key) == v for key, v in (selector or {}).items())]

    def create(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        meta = obj["metadata"]
        existing = self.get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        if existing is not None:
            return existing, False
        self.log.append(Write("create", obj["kind"], meta["name"], copy.deepcopy(obj)))
        return self.put(obj), True

    def patch(self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any], *,
              subresource: str | None = None) -> dict[str, Any] | None:
        key = (kind, namespace, name)
        if key not in self.objects:
            return None
        self.log.append(Write("patch", kind, name, copy.deepcopy(patch), subresource))
        old = self.objects[key]
        if subresource == "status":
            new = {**old, "status": merge_patch(old.get("status") or {}, patch.get("status") or {})}
        else:
            new = merge_patch(old, {k: v for k, v in patch.items() if k != "status"})
            if new.get("spec") != old.get("spec"):
                new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        new["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[key] = new
        return copy.deepcopy(new)

    def delete(self, api_version: str, kind: str, namespace: str, name: str, **_: Any) -> bool:
        self.log.append(Write("delete", kind, name))
        return self.objects.pop((kind, namespace, name), None) is not None

    # -- WatchCache (the watch is never behind here) ------------------------------------

    def all(self, api_version: str, kind: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (k, _, _), o in self.objects.items() if k == kind]

    # -- kopf.event -----------------------------------------------------------------------

    def event(self, obj: Mapping, *, type: str, reason: str, message: str = "") -> None:  # noqa: A002 (kopf's keywords)
        self.log.append(Write("event", obj["kind"], obj["metadata"]["name"], (type, reason, message)))


class QuietBuffer:
    """The NatsBridge calls a round makes, answered as by a fresh job's empty buffer."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, str]] = []

    def ensure_job(self, url: str, namespace: str, name: str, cfg: Any, auth: Any = None) -> None:
        self.jobs.append((namespace, name))

    def job_state(self, *_: Any, **__: Any) -> None:
        return None

    def agent_versions(self, *_: Any, **__: Any) -> dict[str, int]:
        return {}

    def backlog(self, *_: Any, **__: Any) -> dict[str, int]:
        return {}


CUSTOM_KINDS = ("RLJob", "RolloutPool", "AgentEnv")


def is_custom(obj: Mapping) -> bool:
    return obj.get("apiVersion") == API_VERSION and obj.get("kind") in CUSTOM_KINDS
