"""What one RLJob reconcile round reads before it decides: the job parsed once, what it
names (pools, envs, Secrets), its trainer pods and its rollout pool, and the Events it
queues (posted after the status write, controllers.rljob)."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kuberl.operator.api import RLJob
from kuberl.operator.api.conditions import PODS_REJECTED, READY
from kuberl.operator.api.constants import API_VERSION, LABEL_GANG_GENERATION, LABEL_REPLICA_INDEX
from kuberl.operator.api.rolloutpool import RolloutPoolSpec
from kuberl.operator.controllers.runtime import RT, _controller_uid, _event, buffer_auth, plain, secret_data
from kuberl.operator.decisions import access, lifecycle
from kuberl.operator.decisions import references as semantics
from kuberl.operator.decisions import status as st
from kuberl.operator.naming import pool_name_for, trainer_selector


@dataclass
class JobRound:
    """One round on one job: what it read, and the Events it will post."""

    body: dict[str, Any]
    job: RLJob
    now: float
    old_status: dict[str, Any]
    conds: list[dict[str, Any]]  # the conditions as this round leaves them so far
    lookups: semantics.Lookups
    pools: dict[str, dict | None]  # the RolloutPool the job names or owns, as read (and as created this round)
    envs: dict[str, dict | None]  # likewise its AgentEnvs
    events: list[tuple[Mapping, st.Event]] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return self.job.metadata["namespace"]

    @property
    def name(self) -> str:
        return self.job.metadata["name"]

    @property
    def uid(self) -> str:
        return self.body["metadata"]["uid"]

    @property
    def generation(self) -> int | None:
        return self.body["metadata"].get("generation")

    @property
    def pool_name(self) -> str | None:
        return pool_name_for(self.job)

    def owns(self, obj: Mapping | None) -> bool:
        return obj is not None and _controller_uid(obj) == self.uid

    def event(self, type_: str, reason: str, message: str, on: Mapping | None = None) -> None:
        """Queue an Event on the job (or on ``on``), posted once the status is written."""
        self.events.append((self.body if on is None else on, st.Event(type_, reason, message)))

    def post_events(self) -> None:
        for obj, event in self.events:
            _event(obj, event.type, event.reason, event.message)
        self.events.clear()


def observe(body: dict[str, Any]) -> JobRound:
    data = plain(body)
    job = RLJob.model_validate({"metadata": data.get("metadata", {}), "spec": data.get("spec", {})})
    old_status = copy.deepcopy(body.get("status") or {})
    lookups, pools, envs = _lookups(job)
    return JobRound(body=body, job=job, now=time.time(), old_status=old_status,
                    conds=old_status.get("conditions") or [],
                    lookups=lookups, pools=pools, envs=envs)


def _lookups(job: RLJob) -> tuple[semantics.Lookups, dict[str, dict | None], dict[str, dict | None]]:
    namespace = job.metadata["namespace"]
    pool_names, env_names = semantics.referenced_names(job)
    pools = {n: RT.watched.get(API_VERSION, "RolloutPool", namespace, n) for n in pool_names}
    envs = {n: RT.watched.get(API_VERSION, "AgentEnv", namespace, n) for n in env_names}
    active: frozenset[str] = frozenset()
    busy = [p.get("status", {}).get("boundJob") for p in pools.values() if p]
    busy = [b for b in busy if b and b != job.metadata["name"]]
    if busy:
        active = frozenset(b for b in busy if (other := RT.watched.get(API_VERSION, "RLJob", namespace, b))
                           and not st.is_finished((other.get("status") or {}).get("conditions")))

    def existing(obj: dict | None) -> semantics.Existing | None:
        if obj is None:
            return None
        return semantics.Existing(owner_uid=_controller_uid(obj), spec=obj.get("spec") or {},
                                  bound_job=(obj.get("status") or {}).get("boundJob"))

    secrets: dict[str, frozenset[str] | None] | None = None  # None: not read (the installation forbids it)
    if RT.settings.read_job_secrets:
        secrets = {}
        for need in access.secret_needs(job):
            data = secret_data(namespace, need.name)
            secrets[need.name] = frozenset(data) if data is not None else None
    lookups = semantics.Lookups(pools={n: existing(o) for n, o in pools.items()},
                                envs={n: existing(o) for n, o in envs.items()},
                                active_jobs=active, secrets=secrets)
    return lookups, pools, envs


def job_buffer_auth(job: RLJob) -> dict[str, str] | None:
    ref = job.spec.buffer.credentials_secret
    return buffer_auth(job.metadata["namespace"], ref.name if ref else None)


def _trainer_pods(namespace: str, name: str, replicas: int, finished: bool) -> list[dict]:
    """The gang's pods from the watch; from the API server when the watch shows fewer than
    the gang has: a gang that is starting or lost a pod, or a watch still listing after a
    standby took over (kopf gates handlers on its indices only once per process). The
    decisions that follow (create pods, restart the gang) must not rest on a partial list;
    a finished job takes none, so its (possibly deleted) pods are not asked for again."""
    pods = RT.watched.list("v1", "Pod", namespace, trainer_selector(name))
    if len(pods) < replicas and not finished:
        pods = RT.kube.list("v1", "Pod", namespace, trainer_selector(name))
    return pods


def pod_views(r: JobRound, finished: bool) -> tuple[lifecycle.PodView, ...]:
    views = []
    for pod in _trainer_pods(r.namespace, r.name, r.job.spec.trainer.replicas, finished):
        meta, status = pod["metadata"], pod.get("status") or {}
        labels = meta.get("labels") or {}
        views.append(
            lifecycle.PodView(
                name=meta["name"],
                index=int(labels.get(LABEL_REPLICA_INDEX, -1)),
                generation=int(labels.get(LABEL_GANG_GENERATION, -1)),
                phase=status.get("phase", "Pending"),
                ready=st.is_true(status.get("conditions"), READY),
                deleting=bool(meta.get("deletionTimestamp")),
                message=status.get("message", ""),
                disrupted=any(
                    c.get("type") == "DisruptionTarget" and c.get("status") == "True"
                    for c in status.get("conditions") or []
                ),
            )
        )
    return tuple(views)


def rollout_view(r: JobRound) -> st.RolloutView:
    if r.pool_name is None:
        return st.RolloutView(colocated=True)
    pool = r.pools.get(r.pool_name) or {}
    ready = st.find((pool.get("status") or {}).get("conditions"), READY) or {}
    rejected = f"RolloutPool {r.pool_name}: {ready.get('message')}" if ready.get("reason") == PODS_REJECTED else None
    desired = RolloutPoolSpec.model_validate(pool.get("spec") or {}).replicas if pool else 0  # no pool yet: none
    return st.RolloutView(colocated=False, ready=(pool.get("status") or {}).get("readyReplicas", 0), desired=desired,
                          rejected=rejected)
