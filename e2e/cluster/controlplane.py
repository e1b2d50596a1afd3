"""A real Kubernetes control plane on loopback, for integration tests and laptops.

etcd + kube-apiserver + kube-controller-manager + kube-scheduler, built by build.sh, plus
kwok simulating the kubelets of fake CPU and GPU nodes. Everything listens on 127.0.0.1
on ephemeral ports and lives in one work directory; nothing needs root or Docker.

With real_node=True (root; e2e/setup.sh installs containerd, runc and the CNI plugins) a
real kubelet node joins as well (node.py): the CPU pool where pods really run. The API
server then serves on the node's bridge address, which pods reach through the
kubernetes Service.

    python e2e/cluster/controlplane.py up     # prints the kubeconfig path
    python e2e/cluster/controlplane.py down

From Python (tests):

    with ControlPlane() as cp:
        subprocess.run([cp.kubectl_path, "--kubeconfig", cp.kubeconfig, "get", "nodes"])

Teardown: every component runs in its own process group and is killed as a group; an
atexit hook stops a plane its process started, and (unless started with
die_with_parent=False, as `up` does) the kernel kills each component when the Python
process dies, even by SIGKILL, so a crashed test run leaves nothing behind.

Stdlib only, so it runs before the project's virtualenv exists.
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from e2e.cluster import node_network, pki

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
KWOK_STAGES = HERE / "kwok-stages.yaml"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm")

# Fake-node conventions the operator and tests rely on.
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
POOL_LABEL = "kuberl.io/pool"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
FAKE_PHASE_ANNOTATION = "kuberl.io/fake-phase"  # "Failed" | "Succeeded"; see kwok-stages.yaml

# Controllers we need, by their kube-controller-manager names (fewer controllers, faster
# start, less CPU on small CI machines). node-lifecycle lifts the not-ready taint that
# admission puts on every new node; root-ca-certificate-publisher writes the
# kube-root-ca.crt config map projected service-account volumes refer to;
# clusterrole-aggregation fills the admin/edit/view roles charts bind to.
CONTROLLERS = (
    "garbage-collector-controller", "namespace-controller",
    "serviceaccount-controller", "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller", "clusterrole-aggregation-controller",
    "job-controller", "replicaset-controller", "deployment-controller",
    "statefulset-controller", "endpointslice-controller", "node-lifecycle-controller",
    "taint-eviction-controller", "pod-garbage-collector-controller",
    "ttl-after-finished-controller", "resourcequota-controller", "disruption-controller",
    # Claims bind to the real node's volumes; the protection controllers remove the
    # finalizers admission puts on claims and volumes, or namespaces never finish deleting.
    "persistentvolume-binder-controller", "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
)


def versions() -> dict[str, str]:
    out = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def bin_dir() -> Path:
    cache = Path(os.environ.get("KUBERL_CACHE") or Path.home() / ".cache" / "kuberl")
    return cache / f"bin-{versions()['KUBERNETES_VERSION']}"


def ensure_built() -> Path:
    """The bin directory, running build.sh first if any binary is missing (a no-op otherwise)."""
    from e2e.cluster.node import NODE_BINARIES

    d = bin_dir()
    if not all((d / b).is_file() for b in (*BINARIES, *NODE_BINARIES)):
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=sys.stderr)
    return d


def free_port() -> int:
    # Bind-then-release: another process could take the port before our server binds it;
    # start() retries the whole plane once if a component fails to come up.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_parent_death_signal() -> None:
    # PR_SET_PDEATHSIG: the kernel sends SIGKILL to this child when its parent dies,
    # including when the parent is SIGKILLed and atexit never runs.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def kill_group(pid: int, grace: float = 10.0) -> None:
    """SIGTERM a process group, then SIGKILL it if anything is still alive after `grace`."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            _reap(pid)
            time.sleep(0.05)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@dataclass
class _Api:
    """Just enough of a Kubernetes REST client to bootstrap and probe the plane."""

    server: str
    ctx: ssl.SSLContext

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 10.0):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.startswith(b"{") else raw.decode()

    def ok(self, path: str) -> bool:
        try:
            self.request("GET", path, timeout=3)
            return True
        except (urllib.error.URLError, OSError, ValueError):
            return False


def wait_for(what: str, check, timeout: float, procs: list | None = None, interval: float = 0.2):
    """Poll `check()` until truthy; fail early with the log tail if a component died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        for p in procs or ():
            p.raise_if_dead()
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class _Component:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen | None = None

    def start(self, die_with_parent: bool) -> None:
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killpg reaches any helpers
                # preexec_fn is unsafe only with threads running; we spawn from one thread.
                preexec_fn=set_parent_death_signal if die_with_parent else None,  # noqa: PLW1509
            )

    def raise_if_dead(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; log tail:\n{tail}")

    def stop(self) -> None:
        if self.popen is not None:
            kill_group(self.popen.pid)
            self.popen.wait(timeout=5)


def _kubeconfig(server: str, ca: Path, user: str, cert: pki.Cert) -> dict:
    b64 = lambda p: base64.b64encode(Path(p).read_bytes()).decode()
    # Credentials embedded, so the file stays valid wherever it is copied.
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "kuberl-local",
        "clusters": [{"name": "kuberl-local",
                      "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert.cert),
                                          "client-key-data": b64(cert.key)}}],
        "contexts": [{"name": "kuberl-local", "context": {"cluster": "kuberl-local", "user": user}}],
    }


def fake_node(name: str, pool: str, *, gpus: int = 0, cpu: str = "32", memory: str = "256Gi") -> dict:
    """A Node object kwok will manage. GPU nodes look like the NVIDIA device plugin's:
    the extended resource, gpu.present label and the conventional NoSchedule taint."""
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "type": "kwok", POOL_LABEL: pool}
    resources = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "1Ti"}
    spec: dict = {}
    if gpus:
        labels["nvidia.com/gpu.present"] = "true"
        labels["nvidia.com/gpu.count"] = str(gpus)
        resources[GPU_RESOURCE] = str(gpus)
        spec["taints"] = [dict(GPU_TAINT)]
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1]}},
        "spec": spec,
        # Node status may be set on create; kwok keeps capacity/allocatable as given.
        "status": {"capacity": dict(resources), "allocatable": dict(resources)},
    }


def _node_schedulable(node: dict) -> bool:
    ready = any(c["type"] == "Ready" and c["status"] == "True"
                for c in node.get("status", {}).get("conditions", []))
    # Admission taints every new node not-ready; the node-lifecycle controller removes
    # the taint once the node reports Ready. Only then will anything schedule onto it.
    tainted = any(t["key"].startswith("node.kubernetes.io/") for t in node.get("spec", {}).get("taints", []))
    return ready and not tainted


@dataclass
class ControlPlane:
    workdir: Path | None = None
    cpu_nodes: int = 2
    gpu_nodes: int = 2
    gpus_per_node: int = 8
    real_node: bool = False
    die_with_parent: bool = True
    bin: Path = field(default_factory=bin_dir)
    components: list[_Component] = field(default_factory=list)
    _owns_workdir: bool = False

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def kubectl_path(self) -> Path:
        return self.bin / "kubectl"

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args],
                              input=input, capture_output=True, text=True, check=check)

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> ControlPlane:
        _sweep_stale_workdirs()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="kuberl-cp-"))
            self._owns_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        try:
            if self.real_node:
                from e2e.cluster.node import RealNode

                self.node = RealNode(self)
                self.node.prepare()
            try:
                self._start(timeout)
            except RuntimeError:
                # A component died during start-up; most likely a port free_port() handed
                # out was taken meanwhile. Once more from scratch, with fresh ports.
                self._stop_components()
                if getattr(self, "node", None) is not None:
                    self.node.stop()  # its daemons too: the retry joins a fresh node
                    self.node.prepare()
                shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
                self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _stop_components(self) -> None:
        # Reverse start order: clients first, etcd last, so nothing logs a storm of
        # connection errors while going down.
        while self.components:
            self.components.pop().stop()

    def stop(self) -> None:
        if getattr(self, "node", None) is not None:
            self.node.stop()
            self.node = None
        self._stop_components()
        state = self.workdir / "state.json" if self.workdir else None
        if state is not None and state.exists():
            state.unlink()
        # A temporary work directory goes with the plane (etcd data, keys, logs), unless
        # KUBERL_KEEP_CLUSTER_DIR asks to keep the logs for a post-mortem.
        if self._owns_workdir and not os.environ.get("KUBERL_KEEP_CLUSTER_DIR"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, argv: list[str]) -> _Component:
        c = _Component(name, argv, self.workdir / f"{name}.log")
        c.start(self.die_with_parent)
        self.components.append(c)
        self.record_state()
        return c

    def record_state(self) -> None:
        node = getattr(self, "node", None)
        pids = [x.popen.pid for x in [*self.components, *(node.components if node else ())]]
        (self.workdir / "state.json").write_text(json.dumps({"pids": pids, "kubeconfig": str(self.kubeconfig)}))

    def _start(self, timeout: float) -> None:
        t0 = time.monotonic()
        w = self.workdir
        remaining = lambda: max(5.0, timeout - (time.monotonic() - t0))
        pkidir = w / "pki"
        pkidir.mkdir(exist_ok=True)
        ca = pki.make_ca(pkidir)
        # With a real node the API server serves on the bridge address, where both this
        # machine and pods (through the kubernetes Service) reach it.
        host = node_network.GATEWAY if self.real_node else "127.0.0.1"
        serving = pki.issue(ca, pkidir, "apiserver", cn="kube-apiserver", server_sans=(
            "IP:127.0.0.1", f"IP:{node_network.GATEWAY}", "IP:10.96.0.1", "DNS:localhost", "DNS:kubernetes",
            "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local"))
        admin = pki.issue(ca, pkidir, "admin", cn="kuberl-admin", orgs=("system:masters",))
        kcm = pki.issue(ca, pkidir, "kube-controller-manager", cn="system:kube-controller-manager")
        sched = pki.issue(ca, pkidir, "kube-scheduler", cn="system:kube-scheduler")
        kwok = pki.issue(ca, pkidir, "kwok", cn="kuberl-kwok", orgs=("system:masters",))
        sa_key, sa_pub = pki.make_service_account_keys(pkidir)

        etcd_port, etcd_peer, api_port, kcm_port, sched_port = (free_port() for _ in range(5))
        server = f"https://{host}:{api_port}"
        kubelet_client = pki.issue(ca, pkidir, "apiserver-kubelet-client", cn="kube-apiserver-kubelet-client",
                                   orgs=("system:masters",))

        etcd = self._spawn("etcd", [
            str(self.bin / "etcd"), "--name=kuberl", f"--data-dir={w / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=kuberl=http://127.0.0.1:{etcd_peer}",
            # Throwaway data: fsync only costs time (seconds per test on slow CI disks).
            "--unsafe-no-fsync", "--log-level=warn",
        ])
        wait_for("etcd", lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"), remaining(), [etcd])

        api = self._spawn("kube-apiserver", [
            str(self.bin / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={host}", f"--advertise-address={host}", f"--secure-port={api_port}",
            f"--cert-dir={w / 'apiserver'}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={ca.cert}",
            "--authorization-mode=Node,RBAC",
            # The default admission chain stays on; NodeRestriction belongs with the Node
            # authorizer, as on any production cluster.
            "--enable-admission-plugins=NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={sa_pub}", f"--service-account-signing-key-file={sa_key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--allow-privileged=true", "--profiling=false",
            # logs/exec: the kubelet trusts this certificate; nodes are reached by their
            # InternalIP, never by a name the machine's resolver would have to know.
            f"--kubelet-client-certificate={kubelet_client.cert}", f"--kubelet-client-key={kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP",
        ])
        ctx = ssl.create_default_context(cafile=str(ca.cert))
        ctx.load_cert_chain(str(admin.cert), str(admin.key))
        self.api = _Api(server, ctx)
        wait_for("kube-apiserver /readyz", lambda: self.api.ok("/readyz"), remaining(), [api])

        self.kubeconfig.write_text(json.dumps(_kubeconfig(server, ca.cert, "kuberl-admin", admin), indent=2))
        for name, cert in (("kube-controller-manager", kcm), ("kube-scheduler", sched), ("kwok", kwok)):
            (w / f"{name}.kubeconfig").write_text(json.dumps(_kubeconfig(server, ca.cert, name, cert)))

        cm = self._spawn("kube-controller-manager", [
            str(self.bin / "kube-controller-manager"),
            f"--kubeconfig={w / 'kube-controller-manager.kubeconfig'}",
            f"--controllers={','.join(CONTROLLERS)}",
            # Each controller acts as its own service account with its bootstrap role, as
            # in production, so RBAC gaps show up here rather than in a real cluster.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={sa_key}", f"--root-ca-file={ca.cert}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={kcm_port}",
            f"--cert-dir={w / 'kcm'}",
            "--node-monitor-period=2s",
            # kwok renews fake nodes' leases from one process; on a loaded 2-core machine a
            # renewal can slip past the default 50 s, the node goes NotReady and its pods
            # lose Ready for good (kwok's stages never set it back). Fake nodes never die
            # for real, so give them a long grace.
            "--node-monitor-grace-period=300s",
        ])
        sch = self._spawn("kube-scheduler", [
            str(self.bin / "kube-scheduler"),
            f"--kubeconfig={w / 'kube-scheduler.kubeconfig'}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={sched_port}",
            f"--cert-dir={w / 'scheduler'}",
        ])
        kw = self._spawn("kwok", [
            str(self.bin / "kwok"), f"--kubeconfig={w / 'kwok.kubeconfig'}",
            f"--config={KWOK_STAGES}",
            "--manage-all-nodes=false",
            # Leases, renewed by kwok's lease controller, are the nodes' heartbeat; without
            # them (kwok's default) nothing refreshes node status, the node-lifecycle
            # controller finds every node Unknown after its grace period and marks every pod
            # on it NotReady for good (no stage sets Ready back).
            "--node-lease-duration-seconds=40",
            f"--manage-nodes-with-annotation-selector={'='.join(FAKE_NODE_ANNOTATION)}",
            "--cidr=10.244.0.0/16", "--node-ip=10.240.0.1",
        ])
        procs = [etcd, api, cm, sch, kw]
        insecure = ssl._create_unverified_context()  # their self-signed serving certs
        for port, name in ((kcm_port, "kube-controller-manager"), (sched_port, "kube-scheduler")):
            wait_for(f"{name} /healthz",
                     lambda port=port: _http_ok(f"https://127.0.0.1:{port}/healthz", insecure),
                     remaining(), procs)
        # The service-account controller creating `default` proves the controller
        # manager is reconciling, not merely serving /healthz.
        wait_for("the default service account",
                 lambda: self.api.ok("/api/v1/namespaces/default/serviceaccounts/default"), remaining(), procs)

        nodes = [fake_node(f"kwok-cpu-{i}", "cpu") for i in range(self.cpu_nodes)]
        nodes += [fake_node(f"kwok-gpu-{i}", "gpu", gpus=self.gpus_per_node) for i in range(self.gpu_nodes)]
        for n in nodes:
            self.api.request("POST", "/api/v1/nodes", n)
        for n in nodes:
            path = f"/api/v1/nodes/{n['metadata']['name']}"
            wait_for(f"node {n['metadata']['name']} Ready and untainted",
                     lambda path=path: _node_schedulable(self.api.request("GET", path)), remaining(), procs)
        if self.real_node:
            self.node.join(ca, server, lambda user, cert: _kubeconfig(server, ca.cert, user, cert), remaining)


def _sweep_stale_workdirs() -> None:
    """Remove temporary work directories of planes whose Python died by SIGKILL: the
    components died with it (PDEATHSIG), but nobody was left to delete the directory."""
    for d in Path(tempfile.gettempdir()).glob("kuberl-cp-*"):
        state = d / "state.json"
        try:
            pids = json.loads(state.read_text())["pids"]
        except (OSError, ValueError, KeyError):
            continue  # starting right now, or not ours to judge
        if not _alive(pids):
            shutil.rmtree(d, ignore_errors=True)


def _http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=3) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _alive(pids: list[int]) -> bool:
    for pid in pids:
        try:
            os.killpg(pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            pass
    return False


def main(argv: list[str] | None = None) -> None:
    from e2e.cluster.cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
