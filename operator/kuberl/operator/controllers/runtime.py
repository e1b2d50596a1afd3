"""What every controller shares: the API and NATS clients, per-object locks, create-or-get."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import copy
import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from kuberl.operator.adapters import metrics
from kuberl.operator.adapters.kube import Kube, KubeError, api_client_from_environment
from kuberl.operator.adapters.nats import NatsBridge
from kuberl.operator.adapters.watch_cache import WatchCache, plain
from kuberl.operator.api.conditions import CHILD_REJECTED, READY
from kuberl.operator.api.constants import (
    API_VERSION,
    MANAGED_BY,
    MANIFEST_HASH_ANNOTATION,
    PAUSED_ANNOTATION,
    SPEC_HASH_ANNOTATION,
)
from kuberl.operator.children.common import is_paused
from kuberl.operator.decisions.access import AccessPolicy
from kuberl.operator.decisions.backoff import retry_delay
from kuberl.operator.decisions import status as st
from kuberl.operator.decisions.status import changed_fields
from kuberl.operator.settings import OperatorSettings
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)

SETTINGS = OperatorSettings.from_env()


class Runtime:
    """Process-wide state: API and NATS clients, per-object locks, rate samples."""

    def __init__(self, settings: OperatorSettings):
        self.settings = settings
        self._kube: Kube | None = None
        self._nats: NatsBridge | None = None
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.phases = metrics.PhaseBook()
        self.rate_samples: dict[str, tuple[float, int]] = {}
        self.streams_ready: set[tuple[str, str]] = set()  # (uid, url)
        self.last_autoscale_eval: dict[str, float] = {}
        self.last_pool_round: dict[str,
                                   float] = {}  # uid -> when a pool's children and status were last brought up to date
        self.last_watched: dict[str, float] = {}  # uid -> when (monotonic) a watch event last showed the custom object
        self.watched = WatchCache()
        # uid -> the resourceVersion this process last knew to be the object's current one
        # (read or written by it): a watched copy at that version needs no GET.
        self.current_version: dict[str, str] = {}
        self.secrets: dict[tuple[str, str], tuple[float, dict[str, str] | None]] = {}

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = Kube(
                api_client_from_environment(pool_size=self.settings.executor_threads + self.settings.timer_threads + 8),
                observe=_note_current,
            )
        return self._kube

    @property
    def nats(self) -> NatsBridge:
        if self._nats is None:
            self._nats = NatsBridge(self.settings.nats_timeout_s)
        return self._nats

    def lock(self, uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(uid, threading.Lock())

    def forget(self, uid: str) -> None:
        with self._locks_guard:
            self._locks.pop(uid, None)
        self.rate_samples.pop(uid, None)
        self.last_autoscale_eval.pop(uid, None)
        self.last_pool_round.pop(uid, None)
        self.last_watched.pop(uid, None)
        self.streams_ready = {k for k in self.streams_ready if k[0] != uid}
        self.current_version.pop(uid, None)
        self.phases.forget(uid)


RT = Runtime(SETTINGS)


def managed_by_us(spec: Mapping, **_: Any) -> bool:
    """spec.managedBy empty or ours: otherwise another controller (e.g. MultiKueue) owns the job."""
    return spec.get("managedBy") in (None, "", MANAGED_BY)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _controller_uid(obj: Mapping | None) -> str | None:
    for ref in (obj or {}).get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def _event(body: Mapping, type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message[:1000])


def ensure(child: dict[str, Any], owner: Mapping) -> tuple[dict[str, Any], bool]:
    """Create-or-get a child owned by `owner` (so deleting the owner collects it)."""
    kopf.adopt(child, owner=owner)
    obj, created = RT.kube.create(child)
    if created:
        metrics.CHILDREN_CREATED.labels(child["kind"]).inc()
    return obj, created


def ensure_asserted(child: dict[str, Any], owner: Mapping, refresh: tuple[str, ...] = ()) -> None:
    """`ensure`, skipped while the watched child carries the digest of this very manifest
    (the annotation this call writes).

    The digest lives on the child, not in this process, so a standby that takes over finds
    every unchanged child asserted and sends nothing; a child deleted behind the operator's
    back is gone from the watch and created again on the next round. `refresh` names the
    top-level fields brought to the desired value on an existing child we own (a
    ConfigMap's data); other fields of an existing child are left as they are."""
    meta = child["metadata"]
    digest = _hash(child)
    meta.setdefault("annotations", {})[MANIFEST_HASH_ANNOTATION] = digest
    seen = RT.watched.get(child["apiVersion"], child["kind"], meta["namespace"], meta["name"])
    if seen is not None and (seen["metadata"].get("annotations") or {}).get(MANIFEST_HASH_ANNOTATION) == digest:
        return
    obj, created = ensure(child, owner)
    if not created and obj is not child and _controller_uid(obj) == owner["metadata"]["uid"] \
            and (obj["metadata"].get("annotations") or {}).get(MANIFEST_HASH_ANNOTATION) != digest:
        patch = {"metadata": {"annotations": {MANIFEST_HASH_ANNOTATION: digest}}, **{f: child[f] for f in refresh}}
        RT.kube.patch(child["apiVersion"], child["kind"], meta["namespace"], meta["name"], patch)


def ensure_workload(child: dict[str, Any], owner: Mapping, live: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Create-or-update a Deployment: the template is replaced when its hash changes, the
    replica count whenever it differs (so `kubectl scale` on the parent reaches the pods).

    `live` is the Deployment as just read (the caller needs its status anyway), so an
    existing one costs no create-or-get; None creates it. Returns what was created, else None."""
    template_hash = _hash(child["spec"]["template"])
    child["metadata"].setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = template_hash
    if live is None:
        existing, created = ensure(child, owner)
        if created:
            return existing
    else:
        existing = live
    patch: dict[str, Any] = {}
    if existing.get("metadata", {}).get("annotations", {}).get(SPEC_HASH_ANNOTATION) != template_hash:
        patch = {"metadata": {"annotations": {SPEC_HASH_ANNOTATION: template_hash}},
                 "spec": {"template": child["spec"]["template"]}}
    if existing.get("spec", {}).get("replicas") != child["spec"]["replicas"]:
        patch.setdefault("spec", {})["replicas"] = child["spec"]["replicas"]
    if patch:
        meta = child["metadata"]
        RT.kube.patch(child["apiVersion"], child["kind"], meta["namespace"], meta["name"], patch)
    return None


def _set_paused(api_version: str, kind: str, namespace: str, obj: dict[str, Any] | None, paused: bool) -> bool:
    """Pause or unpause a child; True when this call changed it."""
    if obj is None or is_paused(obj["metadata"]) == paused:
        return False
    value = "true" if paused else None  # merge-patch null removes the annotation
    RT.kube.patch(api_version, kind, namespace, obj["metadata"]["name"],
                  {"metadata": {"annotations": {PAUSED_ANNOTATION: value}}})
    return True


SECRET_TTL_S = 30.0  # a rotated Secret is picked up within this; saves a GET per job per round


def secret_data(namespace: str, name: str) -> dict[str, str] | None:
    """A Secret's keys and values (decoded), None when it does not exist. The values are used
    to authenticate and never logged, put in status, Events or ConfigMaps."""
    key, now = (namespace, name), time.monotonic()
    cached = RT.secrets.get(key)
    if cached is not None and now - cached[0] < SECRET_TTL_S:
        return cached[1]
    obj = RT.kube.get("v1", "Secret", namespace, name)
    data = None if obj is None else {k: base64.b64decode(v).decode(errors="replace") for k,
                                     v in (obj.get("data") or {}).items()}
    if data is not None:  # a missing Secret is looked for again next round: the job waits on it
        RT.secrets[key] = (now, data)
    return data


def buffer_auth(namespace: str, secret: str | None) -> dict[str, str] | None:
    """The job's NATS credentials (the Secret its spec.buffer.credentialsSecret names), None
    when it names none. A missing Secret gives empty credentials: the connection then fails
    naming the field."""
    if not secret or not RT.settings.read_job_secrets:
        return None  # the operator's own credentials, if it has any (NatsBridge)
    return secret_data(namespace, secret) or {}


def access_policy() -> AccessPolicy:
    return AccessPolicy.of(RT.settings)


def buffer_default_url() -> str:
    from kuberl.workloads.spec import BufferSpec

    return BufferSpec().url


PERIODIC = "timer"  # the trigger of the sweeper's rounds (controllers.sweeper), as metrics label it


def reconcile_fresh(kind: str, body: Mapping, trigger: str, reconcile: Callable[[dict[str, Any]], None]) -> None:
    """The guard every reconcile runs under: objects being deleted are left to their
    finaliser; one round at a time per object (event handlers and the sweeper share the lock);
    on the object as the API server has it now (the body kopf holds may be a few events
    old), skipped when it vanished or was re-created under the same name meanwhile."""
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return
    lock = RT.lock(meta["uid"])
    # A periodic round finding the object's lock held skips it: a handler is bringing the
    # object up to date right now (a new job's create handler, taking seconds on a busy API
    # server), and the round would only wait on a thread and then repeat that work.
    if not lock.acquire(blocking=trigger != PERIODIC):
        return
    try:
        with metrics.reconciling(kind, trigger):
            fresh = current(kind, meta["namespace"], meta["name"], meta["uid"])
            if fresh is None or fresh["metadata"].get("uid") != meta["uid"]:
                return
            reconcile(fresh)
    finally:
        lock.release()


def handled(kind: str, retry: int, run: Callable[[], None]) -> None:
    """A create or update handler's round. A failure (the API server busy or away, NATS
    down) comes back to kopf as a temporary error with a short, growing delay
    (`decisions.backoff`): kopf's default is a minute, and periodic rounds leave an object
    whose create handler has not succeeded to that handler."""
    try:
        run()
    except kopf.PermanentError:
        raise
    except Exception as e:  # noqa: BLE001
        delay = retry_delay(retry)
        raise kopf.TemporaryError(f"{kind} reconcile failed ({type(e).__name__}: {str(e)[:300]}); retrying in "
                                  f"{delay:.0f} s",
                                  delay=delay) from e


def current(kind: str, namespace: str, name: str, uid: str) -> dict[str, Any] | None:
    """The object as the API server has it now, without a request where that is safe.

    The watched copy lags only behind writes: one this process has not written to yet is
    as current as the watch; after a write, the watched copy is current once it reaches the
    resourceVersion this process last knew current (written or read). Otherwise a GET,
    whose version then becomes the known one."""
    seen = RT.watched.get(API_VERSION, kind, namespace, name)
    meta = (seen or {}).get("metadata") or {}
    known = RT.current_version.get(uid)
    if meta.get("uid") == uid and (known is None or meta.get("resourceVersion") == known):
        RT.current_version[uid] = meta["resourceVersion"]
        return copy.deepcopy(seen)
    return RT.kube.get(API_VERSION, kind, namespace, name)  # noted by `_note_current`


def _note_current(obj: Mapping | None) -> None:
    """Every custom object the API server answers a read or write with is, at that moment, current."""
    meta = (obj or {}).get("metadata") or {}
    if (obj or {}).get("apiVersion") == API_VERSION and meta.get("uid") and meta.get("resourceVersion"):
        RT.current_version[meta["uid"]] = meta["resourceVersion"]


def report_refusal(kind: str, body: Mapping, error: KubeError) -> None:
    """A child of a RolloutPool or AgentEnv was refused by the API server: say so on the
    parent (Ready False, ChildRejected, the server's words) and in a Warning Event, once per
    new message, instead of retrying the same object silently every round."""
    meta = body["metadata"]
    old = plain(body.get("status") or {})
    message = f"the API server refused a child: {error.server_message}"
    conds = st.set_condition(old.get("conditions"), READY, False, CHILD_REJECTED, message, now=time.time(),
                             generation=meta.get("generation"))
    for event in st.rejection_events(old.get("conditions"), conds):
        _event(body, event.type, event.reason, event.message)
    log.warning(f"{kind} child refused", namespace=meta["namespace"], name=meta["name"], error=error.server_message)
    patch_status(kind, meta["namespace"], meta["name"], old, {"conditions": conds})


def guarded(kind: str, reconcile: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """`reconcile`, with refused children reported (`report_refusal`) rather than raised."""
    def run(fresh: dict[str, Any]) -> None:
        try:
            reconcile(fresh)
        except KubeError as e:
            if not e.is_refusal:
                raise
            report_refusal(kind, fresh, e)

    return run


_TIMER_THREADS = ThreadPoolExecutor(max_workers=SETTINGS.timer_threads, thread_name_prefix="kuberl-timer")


async def timer_round(kind: str, body: Mapping, run: Callable[[], None]) -> None:
    """A periodic round (controllers.sweeper), on threads of its own: kopf runs every
    synchronous handler in one pool, where a job created while 1,500 objects had their
    rounds (a standby taking over 500 jobs) waited behind them. A failure is logged (and
    counted by `metrics.reconciling`); the next round tries again."""
    context = contextvars.copy_context()  # kopf.event and kopf's loggers read it, as in kopf's own pool
    await asyncio.get_running_loop().run_in_executor(_TIMER_THREADS, context.run, _logged_round, kind, body, run)


def _logged_round(kind: str, body: Mapping, run: Callable[[], None]) -> None:
    try:
        run()
    except Exception:  # noqa: BLE001
        log.exception(f"{kind} reconcile failed", namespace=body["metadata"]["namespace"],
                      name=body["metadata"]["name"])


def stop_timer_threads() -> None:
    """At shutdown: no new round starts; one under way finishes within its request timeouts."""
    _TIMER_THREADS.shutdown(wait=False, cancel_futures=True)


def patch_status(kind: str, namespace: str, name: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Write the status fields that changed, and nothing when none did."""
    changed = changed_fields(old, new)
    if changed:
        RT.kube.patch(API_VERSION, kind, namespace, name, {"status": changed}, subresource="status")
