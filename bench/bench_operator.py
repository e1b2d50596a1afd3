"""Operator benchmark on the local control plane (kwok nodes) with a real nats-server.

1. apply -> all children created: time from POSTing an RLJob until its ConfigMap,
   rendezvous Service, every trainer pod, the RolloutPool and the pool's Deployment
   exist. Baseline, alternated round by round: a client POSTing those same objects
   (the builders' output) itself — the API server's floor, so the difference is what
   the operator adds (watch delivery, kopf dispatch, reconcile).
2. 100 RLJobs at once: time until all are Running, then a minute of steady state, with
   the operator process's CPU (psutil cpu_times) and memory (RSS) sampled throughout.

    .venv/bin/python bench/bench_operator.py [--jobs 100] [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml
from _common import HERE, NatsServer, median, write_result

from e2e.cluster import controlplane  # noqa: E402
from kuberl.operator.adapters.kube import Kube, KubeError  # noqa: E402
from kuberl.operator.api import RLJob, RolloutPool  # noqa: E402
from kuberl.operator.children.rollout import inline_rollout_pool, rollout_deployment
from kuberl.operator.children.desired import job_children
from kuberl.operator.children.trainer import trainer_service
from kuberl.operator.children.workload_config import job_config_map, job_workload_config
from kuberl.operator.naming import (
    config_map_name,
    inline_pool_name,
    trainer_selector,
    trainer_service_name,
)
from kuberl.operator.settings import OperatorSettings  # noqa: E402
from kuberl.workloads.localproc import free_port  # noqa: E402

API = "kuberl.io/v1alpha1"


def job_manifest(name: str, namespace: str, nats_url: str, replicas: int = 2) -> dict:
    doc = next(d for d in yaml.safe_load_all((HERE.parent / "examples" / "tiny-cpu.yaml").read_text()) if d)
    doc["metadata"] = {"name": name, "namespace": namespace}
    doc["spec"]["trainer"] = {"backend": "megatron", "replicas": replicas, "gpusPerReplica": 0,
                              "placement": {"nodeSelector": {"kuberl.io/pool": "cpu"}}}
    doc["spec"]["rollout"]["template"]["placement"] = {"nodeSelector": {"kuberl.io/pool": "cpu"}}
    doc["spec"]["algorithm"]["entropyCoef"] = 0.0  # the megatron trainer computes no entropies
    # JetStream reserves maxStreamBytes per stream up front; 100 jobs x the 8 GiB default
    # exceed the bench server's disk ("insufficient storage resources").
    doc["spec"]["buffer"] = {"url": nats_url, "maxStreamBytes": 64 * 1024**2}
    return doc


def children_exist(kube: Kube, namespace: str, name: str, replicas: int) -> bool:
    pods = kube.list("v1", "Pod", namespace, trainer_selector(name))
    return (len(pods) == replicas
            and kube.get("v1", "ConfigMap", namespace, config_map_name(name)) is not None
            and kube.get("v1", "Service", namespace, trainer_service_name(name)) is not None
            and kube.get(API, "RolloutPool", namespace, inline_pool_name(name)) is not None
            and kube.get("apps/v1", "Deployment", namespace, inline_pool_name(name)) is not None)


def wait(check, timeout: float, interval: float = 0.02) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if check():
            return time.perf_counter() - start
        time.sleep(interval)
    raise TimeoutError("condition not reached")


def operator_path(kube: Kube, namespace: str, name: str, nats_url: str) -> float:
    start = time.perf_counter()
    kube.create(job_manifest(name, namespace, nats_url))
    try:
        wait(lambda: children_exist(kube, namespace, name, 2), timeout=120)
    except TimeoutError:
        job = kube.get(API, "RLJob", namespace, name) or {}
        raise TimeoutError(f"children of {name} missing; status={job.get('status')} "
                           f"annotations={job.get('metadata', {}).get('annotations')}") from None
    return time.perf_counter() - start


def direct_path(kube: Kube, namespace: str, name: str, nats_url: str) -> float:
    """The same children POSTed by a client: what the API server alone costs."""
    settings = OperatorSettings()
    doc = job_manifest(name, namespace, nats_url)
    job = RLJob.model_validate({"metadata": {**doc["metadata"], "namespace": namespace, "uid": "bench"},
                                "spec": doc["spec"]})
    pool = inline_rollout_pool(job, namespace, settings)
    objs = [job_config_map(job, settings, job_workload_config(job)), trainer_service(job, namespace, settings),
            *job_children(job, settings).trainer_pods(), pool,
            rollout_deployment(RolloutPool.model_validate(pool), namespace, settings, bound_job=name)]
    start = time.perf_counter()
    for obj in objs:
        kube.create(obj)
    wait(lambda: children_exist(kube, namespace, name, 2), timeout=60)
    return time.perf_counter() - start


class Sampler(threading.Thread):
    """CPU seconds and RSS of the operator process, sampled every half second."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, float, int]] = []  # (t, cpu seconds, rss bytes)
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set() and self.proc.is_running():
            try:
                t = self.proc.cpu_times()
            except psutil.NoSuchProcess:
                return
            self.samples.append((time.monotonic(), t.user + t.system, self.proc.memory_info().rss))
            time.sleep(0.5)

    def window(self, t0: float, t1: float) -> dict:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return {}
        cpu = inside[-1][1] - inside[0][1]
        return {"cpu_seconds": round(cpu, 2),
                "cpu_percent_of_one_core": round(100 * cpu / (inside[-1][0] - inside[0][0]), 1),
                "rss_mib_peak": round(max(s[2] for s in inside) / 2**20, 1),
                "rss_mib_end": round(inside[-1][2] / 2**20, 1)}


def stop_operator(proc: subprocess.Popen) -> None:
    """SIGTERM (kopf's graceful stop), SIGKILL after 20 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steady-seconds", type=float, default=60)
    ap.add_argument("--log-level", default="WARNING", help="operator log level")
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep the temp dir with the operator's and nats-server's logs")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kuberl-bench-op-"))
    plane = controlplane.ControlPlane(bin=controlplane.ensure_built(), cpu_nodes=4, gpu_nodes=1)
    plane.start()
    nats_server = NatsServer(tmp / "nats")
    (tmp / "nats").mkdir()
    nats_server.start()
    proc = None
    try:
        plane.kubectl("apply", "--server-side", "-f", str(HERE.parent / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/rljobs.kuberl.io",
                      "crd/rolloutpools.kuberl.io", "crd/agentenvs.kuberl.io")
        import kubernetes

        kube = Kube(kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig)))
        for ns in ("bench-latency", "bench-direct", "bench-scale"):
            kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
        # Pods are refused until the service-account controller has made each namespace's default account.
        wait(lambda: all(kube.request("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default")[0] == 200
                         for ns in ("bench-latency", "bench-direct", "bench-scale")), timeout=60, interval=0.2)

        # Right after a CRD is Established its storage may still answer 429 for a moment; start
        # the operator once the kinds really list, so startup noise stays out of the numbers.
        def kinds_list() -> bool:
            try:
                return all(kube.request("GET", f"/apis/{API}/{plural}")[0] == 200 for plural in ("rljobs",
                                                                                                 "rolloutpools",
                                                                                                 "agentenvs"))
            except KubeError:
                return False

        wait(kinds_list, timeout=60, interval=0.5)
        env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig), "KUBERL_RECONCILE_INTERVAL": "10",
               "KUBERL_AUTOSCALER_TICK": "5",
               "KUBERL_METRICS_PORT": str(free_port()), "KUBERL_HEALTH_PORT": str(free_port()),
               "KUBERL_LOG_LEVEL": args.log_level}
        log = open(tmp / "operator.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "kuberl.operator.cli", "operator", "--standalone"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        sampler = Sampler(proc.pid)
        sampler.start()
        time.sleep(5)  # kopf startup: CRD discovery, watch streams

        operator_s, direct_s = [], []
        for i in range(args.rounds):
            operator_s.append(operator_path(kube, "bench-latency", f"lat-{i}", nats_server.url))
            direct_s.append(direct_path(kube, "bench-direct", f"dir-{i}", nats_server.url))
        print(f"apply->children: operator median {median(operator_s):.3f}s, direct median {median(direct_s):.3f}s")

        t0 = time.monotonic()
        start = time.perf_counter()
        for i in range(args.jobs):
            kube.create(job_manifest(f"job-{i:03d}", "bench-scale", nats_server.url, replicas=1))
        submitted = time.perf_counter() - start

        def all_created() -> bool:
            pods = kube.list("v1", "Pod", "bench-scale", {"kuberl.io/role": "trainer"})
            return len(pods) >= args.jobs

        created_s = wait(all_created, timeout=900, interval=1) + submitted

        def phases() -> dict[str, int]:
            _, body = kube.request("GET", f"/apis/{API}/namespaces/bench-scale/rljobs")
            out: dict[str, int] = {}
            for j in body["items"]:
                conds = (j.get("status") or {}).get("conditions") or []
                if any(c["type"] == "Created" and c["status"] == "True" for c in conds):
                    out["created"] = out.get("created", 0) + 1
                phase = (j.get("status") or {}).get("phase", "none")
                out[phase] = out.get(phase, 0) + 1
            return out

        # "Created" (every child and stream made, status written) is the operator's part.
        # Running also needs kwok to keep pods Ready: on an overloaded 2-core machine node
        # heartbeats lapse, the node-lifecycle controller marks pods NotReady and kwok's
        # stages never mark them Ready again, so Running is reported, not waited for.
        running_s = wait(lambda: phases().get("created", 0) == args.jobs, timeout=900, interval=1) + created_s
        t1 = time.monotonic()
        time.sleep(args.steady_seconds)
        t2 = time.monotonic()
        print(f"{args.jobs} jobs: all trainer pods after {created_s:.1f}s, all Created after {running_s:.1f}s; "
              f"{phases()}")
        result = {
            "what": "apply -> all children created (ConfigMap, rendezvous "
                    "Service, 2 trainer pods, RolloutPool, Deployment)",
            "rounds": args.rounds,
            "apply_to_children_s": {"operator_median": round(median(operator_s), 3),
                                    "operator_max": round(max(operator_s), 3),
                                    "direct_client_median": round(median(direct_s), 3),
                                    "direct_client_max": round(max(direct_s), 3),
                                    "operator_overhead_median": round(median(operator_s) - median(direct_s), 3)},
            "many_jobs": {"jobs": args.jobs, "submit_s": round(submitted, 2),
                          "all_trainer_pods_created_s": round(created_s, 1),
                          "all_created_condition_s": round(running_s, 1), "phases_after_steady_state": phases(),
                          "reconcile_interval_s": 10, "autoscaler_tick_s": 5,
                          "operator_during_rollout": sampler.window(t0, t1),
                          "operator_steady_state": {"seconds": args.steady_seconds, **sampler.window(t1, t2)}},
            "note": "2-core machine shared with the control plane, kwok and "
                    "nats-server; the operator runs kopf with 16 handler threads",
        }
        sampler.stop_flag.set()
        print(write_result("bench_operator", result))
    finally:
        if proc is not None:
            stop_operator(proc)
        nats_server.stop()
        plane.stop()
        if args.keep_logs:
            print(f"operator and nats-server logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    # SIGTERM runs the finally blocks too: the operator runs in its own session and would outlive us.
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
