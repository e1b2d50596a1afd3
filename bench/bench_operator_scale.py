"""The operator at scale, with a failover: many RLJobs on kwok nodes, two replicas, the leader SIGKILLed.

Each RLJob brings a trainer gang, an inline rollout pool and an inline AgentEnv (by default
4 + 4 + 2 = 10 pods). Two operator replicas run with kopf peering (priorities 200 and 100),
each pinned to one CPU core (taskset). The jobs are POSTed at ``--rate`` per second. When
``--kill-at`` of them are in and served (the leader then reconciles them all: the load), the
leader is SIGKILLed and the rest are POSTed at the same rate; the standby has to take over.

Measured: apply → children (every trainer pod, the pool's and the env's Deployments seen by
a watch) per job, p50/p99, for the jobs the leader served and for those submitted after the
kill (these include the failover); the failover time (the leader's SIGKILL → the first child
of a job submitted after it); children duplicated (more pods or Deployments for a job than
its spec asks for); jobs Running; the operators' CPU and memory; API requests per reconcile
(the standby's Prometheus counters).

    .venv/bin/python bench/bench_operator_scale.py [--jobs 500] [--rate 5] [--kill-at 0.5]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import kubernetes
import yaml
from _common import HERE, NatsServer, write_result
from bench_operator import API, Sampler, stop_operator, wait

from e2e.cluster import controlplane
from kuberl.operator.adapters.kube import Kube
from kuberl.operator.api.constants import LABEL_JOB, LABEL_ROLE, ROLE_AGENTENV, ROLE_ROLLOUT, ROLE_TRAINER
from kuberl.workloads.localproc import free_port

NS = "bench-scale"


def job_manifest(name: str, nats_url: str, trainer: int, rollout: int, envs: int) -> dict:
    doc = next(d for d in yaml.safe_load_all((HERE.parent / "examples" / "tiny-cpu.yaml").read_text()) if d)
    doc["metadata"] = {"name": name, "namespace": NS}
    spec = doc["spec"]
    spec["trainer"] = {"backend": "megatron", "replicas": trainer, "gpusPerReplica": 0,
                       "placement": {"nodeSelector": {"kuberl.io/pool": "cpu"}}}
    spec["rollout"]["template"].update(replicas=rollout, minReplicas=rollout, maxReplicas=rollout,
                                       placement={"nodeSelector": {"kuberl.io/pool": "cpu"}})
    # AgentEnv names are the namespace's: one of its own per job.
    spec["reward"] = {"type": "agentEnv", "agentEnv": f"{name}-sums"}
    doc["spec"]["algorithm"]["entropyCoef"] = 0.0  # the megatron trainer computes no entropies
    spec["agentEnvs"] = [{"name": f"{name}-sums", "spec": {"task": "arithmetic", "replicas": envs}}]
    # JetStream reserves maxStreamBytes per stream up front: keep 2 streams x jobs within the disk.
    spec["buffer"] = {"url": nats_url, "maxStreamBytes": 8 * 1024**2}
    return doc


class ChildWatch(threading.Thread):
    """First time each pod and Deployment of the namespace was seen, by job and role."""

    def __init__(self, api_client):
        super().__init__(daemon=True)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.seen: dict[tuple[str, str], tuple[float, str, str]] = {}  # (kind, name) -> (t, job, role)
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()

    def run(self) -> None:
        threads = [threading.Thread(target=self._follow, args=(kind, fn), daemon=True)
                   for kind,
                   fn in (("Pod", self.core.list_namespaced_pod), ("Deployment", self.apps.list_namespaced_deployment))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _follow(self, kind: str, list_fn) -> None:
        """Re-opened from the last resourceVersion it saw: a watch opened without one first
        replays every object as ADDED, and replaying 5,000 pods every minute put this
        thread a minute or more behind the operator (the stalls that showed as after-kill
        latency in earlier runs). Events stay plain JSON: building client models for them
        cost more than the operator's own work."""
        version: str | None = None
        while not self.stop_flag.is_set():
            try:
                for event in kubernetes.watch.Watch().stream(list_fn, NS, timeout_seconds=60, _request_timeout=90,
                                                             deserialize=False,
                                                             allow_watch_bookmarks=True, resource_version=version):
                    if event["type"] == "ERROR":
                        version = None if (event.get("object") or {}).get("code") == 410 else version
                        break
                    meta = event["object"]["metadata"]
                    version = meta.get("resourceVersion") or version
                    if event["type"] != "ADDED":
                        continue
                    labels = meta.get("labels") or {}
                    with self.lock:
                        self.seen.setdefault((kind, meta["name"]), (time.perf_counter(), labels.get(LABEL_JOB, ""),
                                                                    labels.get(LABEL_ROLE, "")))
            except kubernetes.client.ApiException as e:  # 410 Gone: the version is too old to resume from; list again
                version = None if e.status == 410 else version
                time.sleep(0.5)
            except Exception:  # noqa: BLE001, S110 (a dropped watch is re-opened where it stopped)
                time.sleep(0.5)

    def complete_at(self, job: str, trainer: int, envs_deployment: bool = True) -> float | None:
        """When every child of ``job`` had been seen: its trainer pods, the pool's and the env's Deployments."""
        with self.lock:
            mine = [(t, kind, role) for (kind, _), (t, j, role) in self.seen.items() if j == job]
        pods = [t for t, kind, role in mine if kind == "Pod" and role == ROLE_TRAINER]
        deployments = {role: t for t, kind, role in mine if kind == "Deployment"}
        if (
            len(pods) < trainer
            or ROLE_ROLLOUT not in deployments
            or (envs_deployment and ROLE_AGENTENV not in deployments)
        ):
            return None
        return max([*pods, *deployments.values()])


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))], 3) if xs else float("nan")


def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:  # noqa: S310 (loopback)
        text = r.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("kuberl_api_requests_total", "kuberl_reconcile_total", "kuberl_children_created_total"):
                totals[s.name] = totals.get(s.name, 0.0) + s.value
    return totals


def start_operator(tmp: Path, kubeconfig: Path, priority: int, core: int,
                   log_level: str = "WARNING") -> tuple[subprocess.Popen, int]:
    metrics_port = free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBERL_METRICS_PORT": str(metrics_port),
           "KUBERL_HEALTH_PORT": str(free_port()), "KUBERL_LOG_LEVEL": log_level,
           # The client writes the kubeconfig's certificates to temp files it removes at exit,
           # which a SIGKILLed leader never reaches: they go with the run's temp dir.
           "TMPDIR": str(tmp)}
    log = open(tmp / f"operator-{priority}.log", "w")  # noqa: SIM115 (the child keeps the fd)
    argv = ["taskset", "-c", str(core), sys.executable, "-m", "kuberl.operator.cli", "operator", "-n", NS,
            "--peering", "kuberl", "--priority", str(priority)]
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, metrics_port


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--trainer", type=int, default=4)
    ap.add_argument("--rollout", type=int, default=4)
    ap.add_argument("--envs", type=int, default=2)
    ap.add_argument("--kill-at", type=float, default=0.5,
                    help="share of the jobs submitted when the leader is SIGKILLed")
    ap.add_argument("--rate", type=float, default=5.0,
                    help="jobs POSTed per second (0: as fast as the API server takes them)")
    ap.add_argument("--steady-seconds", type=float, default=60)
    ap.add_argument("--core", type=int, default=1, help="the CPU core each operator replica is pinned to")
    ap.add_argument("--result", default="bench_operator_scale")
    ap.add_argument("--log-level", default="WARNING",
                    help="the operators' (INFO logs every handler and round: it costs CPU)")
    ap.add_argument("--logs", type=Path,
                    help="copy both replicas' logs here (they are deleted with the run's temp dir otherwise)")
    args = ap.parse_args()
    pods_per_job = args.trainer + args.rollout + args.envs

    tmp = Path(tempfile.mkdtemp(prefix="kuberl-bench-scale-"))
    # kwok nodes hold 110 pods each; given CPU and memory for 110 of these pods (1 CPU, 2 GiB each).
    nodes = math.ceil(args.jobs * pods_per_job / 105) + 1
    plane = controlplane.ControlPlane(bin=controlplane.ensure_built(), cpu_nodes=0, gpu_nodes=0)
    plane.start(timeout=600)
    for i in range(nodes):
        plane.api.request("POST", "/api/v1/nodes",
                          controlplane.fake_node(f"kwok-cpu-{i}", "cpu", cpu="128", memory="512Gi"))
    for i in range(nodes):
        wait(lambda i=i: controlplane._node_schedulable(plane.api.request("GET", f"/api/v1/nodes/kwok-cpu-{i}")),
             timeout=120, interval=0.5)
    (tmp / "nats").mkdir()
    nats = NatsServer(tmp / "nats")
    nats.start()
    procs: list[subprocess.Popen] = []
    try:
        plane.kubectl("apply", "--server-side", "-f", str(HERE.parent / "crds"))
        peering = subprocess.run([sys.executable, "-m", "kuberl.operator.cli", "operator", "--print-peering-crds"],
                                 capture_output=True, text=True, check=True).stdout
        plane.kubectl("apply", "--server-side", "-f", "-", input=peering)
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/rljobs.kuberl.io",
                      "crd/rolloutpools.kuberl.io", "crd/agentenvs.kuberl.io", "crd/kopfpeerings.kopf.dev")
        api_client = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
        kube = Kube(api_client)
        kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
        wait(lambda: kube.request("GET", f"/api/v1/namespaces/{NS}/serviceaccounts/default")[0] == 200, timeout=60,
             interval=0.2)
        wait(lambda: all(kube.request("GET", f"/apis/{API}/{p}")[0] == 200 for p in ("rljobs", "rolloutpools",
                                                                                     "agentenvs")),
             timeout=60, interval=0.5)

        leader, leader_port = start_operator(tmp, plane.kubeconfig, 200, args.core, args.log_level)

        def peers() -> int:
            _, body = kube.request("GET", f"/apis/kopf.dev/v1/namespaces/{NS}/kopfpeerings/kuberl")
            return len(((body or {}).get("status") or {}))

        # The standby joins a running leader, as after a rolling restart: it then stays paused
        # until the take-over, and kopf holds its handlers until its watches have listed.
        # (Two replicas started at the same instant both act for a moment; kopf gates
        # handlers on its indices only once per process, so a standby that did starts
        # its take-over before its watches have listed; see the closing note of issue 16.)
        wait(lambda: peers() >= 1, timeout=60, interval=0.5)
        standby, standby_port = start_operator(tmp, plane.kubeconfig, 100, args.core, args.log_level)
        wait(lambda: peers() >= 2, timeout=60, interval=0.5)
        procs += [leader, standby]
        samplers = {name: Sampler(p.pid) for name, p in (("leader", leader), ("standby", standby))}
        for s in samplers.values():
            s.start()
        watch = ChildWatch(api_client)
        watch.start()
        time.sleep(10)  # both replicas up, peering settled, watches open

        submitted: dict[str, float] = {}
        kill_index = int(args.jobs * args.kill_at)
        killed_at = None
        t0 = time.monotonic()

        def submit(indices: range) -> None:
            start = time.perf_counter()
            for n, i in enumerate(indices):
                if args.rate > 0:
                    time.sleep(max(0.0, start + n / args.rate - time.perf_counter()))
                name = f"job-{i:03d}"
                kube.create(job_manifest(name, nats.url, args.trainer, args.rollout, args.envs))
                submitted[name] = time.perf_counter()

        def served(names) -> bool:
            return all(watch.complete_at(n, args.trainer) is not None for n in names)

        submit(range(kill_index))
        wait(lambda: served(list(submitted)), timeout=1800, interval=1)
        print(f"leader served {kill_index} jobs after {time.monotonic() - t0:.0f}s", flush=True)
        if kill_index < args.jobs:
            leader.send_signal(signal.SIGKILL)
            killed_at = time.perf_counter()
            print(f"leader SIGKILLed after {kill_index} jobs", flush=True)
        submit(range(kill_index, args.jobs))
        submit_s = time.monotonic() - t0
        wait(lambda: served(list(submitted)), timeout=1800, interval=2)
        children_s = time.monotonic() - t0
        latency = {n: watch.complete_at(n, args.trainer) - t for n, t in submitted.items()}
        before = [latency[f"job-{i:03d}"] for i in range(kill_index)]
        after = [latency[f"job-{i:03d}"] for i in range(kill_index, args.jobs)]
        failover_s = round(min(watch.complete_at(f"job-{i:03d}",
                                                 args.trainer) for i in range(kill_index, args.jobs)) - killed_at, 2) \
            if killed_at is not None and after else None
        print(f"children of {args.jobs} jobs after {children_s:.0f}s; failover {failover_s}s", flush=True)

        def running() -> int:
            _, body = kube.request("GET", f"/apis/{API}/namespaces/{NS}/rljobs")
            return sum(1 for j in body["items"] if (j.get("status") or {}).get("phase") == "Running")

        try:
            wait(lambda: running() == args.jobs, timeout=900, interval=5)
        except TimeoutError:
            pass
        running_s = time.monotonic() - t0
        t1 = time.monotonic()
        before_steady = scrape(standby_port)
        time.sleep(args.steady_seconds)
        after_steady = scrape(standby_port)
        t2 = time.monotonic()

        pods = kube.list("v1", "Pod", NS)
        deployments = kube.list("apps/v1", "Deployment", NS)
        per_job: dict[str, dict[str, int]] = {}
        for obj, kind in [(p, "Pod") for p in pods] + [(d, "Deployment") for d in deployments]:
            labels = obj["metadata"].get("labels") or {}
            key = f"{kind}/{labels.get(LABEL_ROLE)}"
            per_job.setdefault(labels.get(LABEL_JOB, ""), {}).setdefault(key, 0)
            per_job[labels.get(LABEL_JOB, "")][key] += 1
        expected = {"Pod/trainer": args.trainer, "Pod/rollout": args.rollout, "Pod/agentenv": args.envs,
                    "Deployment/rollout": 1, "Deployment/agentenv": 1}
        duplicated = sum(max(0, n - expected.get(k, n)) for counts in per_job.values() for k, n in counts.items())
        steady = {k: after_steady.get(k, 0) - before_steady.get(k, 0) for k in after_steady}
        result = {
            "jobs": args.jobs, "pods_per_job": pods_per_job, "pods": len(pods), "kwok_nodes": nodes,
            "submit_s": round(submit_s, 1), "all_children_s": round(children_s, 1),
            "jobs_running": running(), "all_running_s": round(running_s, 1),
            "submit_rate_per_s": args.rate,
            "apply_to_children_s": {"p50_leader": percentile(before, 0.5), "p99_leader": percentile(before, 0.99),
                                    "p50_after_kill": percentile(after, 0.5), "p99_after_kill": percentile(after, 0.99),
                                    "p50_all": percentile(list(latency.values()), 0.5),
                                    "p99_all": percentile(list(latency.values()), 0.99)},
            "failover_s": failover_s, "peering_lifetime_s": 20, "leader_killed_after_jobs": kill_index,
            "children_duplicated": duplicated,
            # Every 10th job applied after the kill: (seconds after the kill it was applied, apply → children).
            "after_kill_timeline": [[round(submitted[f"job-{i:03d}"] - killed_at, 1), round(latency[f"job-{i:03d}"], 2)]
                                    for i in range(kill_index, args.jobs, 10)] if killed_at is not None else [],
            "operator_cpu_mem": {"leader_until_killed": samplers["leader"].window(t0 - 10, time.monotonic()),
                                 "standby_rollout": samplers["standby"].window(t0, t1),
                                 "standby_steady": {"seconds": args.steady_seconds,
                                                    **samplers["standby"].window(t1, t2)}},
            "steady_state_requests": {**{k: int(v) for k, v in steady.items()},
                                      "requests_per_reconcile": round(steady.get("kuberl_api_requests_total", 0)
                                                                      / max(steady.get("kuberl_reconcile_total", 0), 1),
                                                                      2),
                                      "requests_per_s": round(steady.get("kuberl_api_requests_total",
                                                                         0) / args.steady_seconds, 1)},
            "note": "2-core machine shared with the control plane (etcd, API server, controllers, scheduler), kwok and "
                    "nats-server; each operator replica pinned to one core",
        }
        watch.stop_flag.set()
        for s in samplers.values():
            s.stop_flag.set()
        print(write_result(args.result, result))
        print(yaml.safe_dump(result, sort_keys=False))
    finally:
        for p in procs:
            stop_operator(p)
        nats.stop()
        plane.stop()
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for f in tmp.glob("operator-*.log"):
                shutil.copy(f, args.logs / f.name)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
