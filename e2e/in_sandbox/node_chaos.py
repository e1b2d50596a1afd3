"""Chaos on the real node: SIGKILL for a job's workload containers, and the job's audit read
back from the store once its pods are gone.

Shared by the short drill in the real-node suite (test_chaos_on_node.py) and the long run
of `bench/chaos.py --cluster`. A kill is what an OOM kill or a crashed process is: the
container's init gets SIGKILL from the host's PID namespace (the sandbox's, where the
node's processes live), found by its container id in /proc/<pid>/cgroup. Then Kubernetes
does what it does: a trainer container is in a pod that never restarts, so its pod fails
and the operator restarts the gang; an agent's or env server's container is restarted in
its pod by the kubelet.

The audit's inputs are on the store (`observe.uploads.RunFiles`, ``<checkpoint uri>/run``):
the trainer's ledger segments and the agents' weight-load records. The runner reaches the
in-cluster SeaweedFS at its pod's address (the node's bridge is in this network namespace).
"""

from __future__ import annotations

import base64
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from e2e.in_sandbox.node_support import RELEASE_NS, STACK_CREDENTIALS, tiny_job_on_the_node
from kuberl.operator.api.constants import LABEL_ROLE, ROLE_AGENTENV, ROLE_ROLLOUT, ROLE_TRAINER
from kuberl.operator.api.rljob import RLJob
from kuberl.operator.local.audit import audit_files
from kuberl.workloads.observe.uploads import RunFiles
from kuberl.workloads.procstat import processes
from kuberl.workloads.trainer.ledger import Audit, committed_rewards, read_ledger
from tests.support.fixtures_cluster import Kube

GROUP, VERSION = "kuberl.io", "v1alpha1"
S3_PORT = 8333


def chaos_job_on_the_node(namespace: str, steps: int = 150, checkpoint_every: int = 10) -> dict:
    """The node's tiny job, scored by an inline arithmetic AgentEnv, restarted as often as it is killed."""
    job = tiny_job_on_the_node(namespace)
    job["metadata"]["name"] = "tiny-chaos"
    spec = job["spec"]
    spec["reward"] = {"type": "agentEnv", "agentEnv": "sums"}
    spec["agentEnvs"] = [{"name": "sums", "spec": {
        "task": "arithmetic", "replicas": 1, "concurrencyPerReplica": 256, "episodeTimeoutSeconds": 60,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}}}]
    spec["runPolicy"].update(maxSteps=steps, backoffLimit=1000)
    spec["checkpoint"]["intervalSteps"] = checkpoint_every
    spec["evaluation"]["intervalSteps"] = steps
    return job


def kind_of(role: str, container: str) -> str | None:
    """What a workload container is, by its pod's role and its name; None: not a victim."""
    if role == ROLE_TRAINER:
        return "trainer"
    if role == ROLE_ROLLOUT:
        return "SGLang server" if container == "sglang" else "rollout agent"
    if role == ROLE_AGENTENV:
        return "env server"
    return None


def running_workloads(kube: Kube, ns: str) -> dict[str, tuple[str, str]]:
    """{"<pod>/<container>": (kind, container id)} of the workload containers running in ``ns``."""
    out = {}
    for pod in kube.core.list_namespaced_pod(ns).items:
        role = (pod.metadata.labels or {}).get(LABEL_ROLE, "")
        for cs in (pod.status.container_statuses or []) if pod.metadata.deletion_timestamp is None else []:
            kind = kind_of(role, cs.name)
            if kind and cs.state and cs.state.running and cs.container_id:
                out[f"{pod.metadata.name}/{cs.name}"] = (kind, cs.container_id.split("://", 1)[-1])
    return out


def container_init(container_id: str, proc: Path = Path("/proc")) -> int | None:
    """The PID (here) of the container's first process: of the processes in its cgroup, the
    one whose parent is not (the shim is outside it)."""
    members: dict[int, int] = {}
    for stat in processes(proc):
        try:
            if container_id in (proc / str(stat.pid) / "cgroup").read_text():
                members[stat.pid] = stat.ppid
        except OSError:
            continue  # exited meanwhile
    roots = [pid for pid, parent in members.items() if parent not in members]
    return min(roots) if roots else None


@dataclass
class Kill:
    t: float
    process: str
    kind: str
    step: int


@dataclass
class Chaos:
    """Kills a random running workload container every [every/2, every] seconds, with ``seed``."""

    kube: Kube
    ns: str
    job: str
    every: float
    seed: int = 1
    kills: list[Kill] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.t0 = time.monotonic()
        self.next_at = self.t0

    def status(self) -> dict:
        return self.kube.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, "rljobs",
                                                             self.job).get("status") or {}

    def tick(self) -> Kill | None:
        """One kill of a random running workload container, if one is due."""
        now = time.monotonic()
        if now < self.next_at:
            return None
        victims = running_workloads(self.kube, self.ns)
        kill = self._kill(self.rng.choice(sorted(victims)), victims) if victims else None
        if kill is not None:
            self.next_at = now + self.rng.uniform(self.every / 2, self.every)
        return kill

    def kill(self, kind: str) -> Kill | None:
        """One kill of a running container of ``kind`` (the first by name), now."""
        victims = running_workloads(self.kube, self.ns)
        names = sorted(n for n, (k, _) in victims.items() if k == kind)
        return self._kill(names[0], victims) if names else None

    def _kill(self, name: str, victims: dict[str, tuple[str, str]]) -> Kill | None:
        kind, cid = victims[name]
        pid = container_init(cid)
        if pid is None:
            return None
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None  # it ended meanwhile: not a kill
        kill = Kill(round(time.monotonic() - self.t0, 1), name, kind, int(self.status().get("step") or 0))
        self.kills.append(kill)
        print(f"[{kill.t:6.0f}s] SIGKILL {name} ({kind}) at step {kill.step}", flush=True)
        return kill

    def by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for k in self.kills:
            counts[k.kind] = counts.get(k.kind, 0) + 1
        return counts


def job_run_files(kube: Kube, ns: str, job: dict) -> RunFiles:
    """The job's run-files location on the release's SeaweedFS, with the stack's keys in the
    environment (boto3 reads them there, as `kuberl audit` does)."""
    secret = kube.core.read_namespaced_secret(STACK_CREDENTIALS, ns).data
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ[key] = base64.b64decode(secret[key]).decode()
    pods = kube.core.list_namespaced_pod(RELEASE_NS, label_selector="app.kubernetes.io/component=s3").items
    ip = next(p.status.pod_ip for p in pods if p.status.phase == "Running" and p.status.pod_ip)
    model = RLJob.model_validate(job)
    uri = f"{model.spec.checkpoint_uri(ns, job['metadata']['name']).rstrip('/')}/run"
    return RunFiles(uri, f"http://{ip}:{S3_PORT}")


def audit_job(kube: Kube, ns: str, job: dict) -> tuple[Audit, list[float]]:
    """The job's audit from the store, and the mean reward of each committed step."""
    files = job_run_files(kube, ns, job)
    return audit_files(files), committed_rewards(read_ledger(files))

