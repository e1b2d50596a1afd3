"""A real node for the local control plane: containerd + runc + kubelet, kube-proxy and a
cluster DNS, on the bridge of node_network.py. Pods scheduled here really run.

    plane = ControlPlane(real_node=True)   # creates and joins a RealNode; needs root

The node is `kuberl-node-0`, labelled kuberl.io/pool=cpu (the CPU pool); kwok's GPU nodes
stay beside it for placement. Images come from no registry: they are imported into
containerd from OCI archives (e2e/images builds them) and pods use them by local tag.
containerd's content store lives in the cache, so an image imported once stays; its
state (sockets, runc's state, pod network namespaces) lives in the plane's work directory
and goes with it. Teardown kills every container this node started, then the daemons.

A real node starts only inside a sandbox (e2e/sandbox): the kernel ends its processes,
mounts, links and rules when the sandbox ends, however the test ends; its pods' cgroups
live under the sandbox run's own cgroup root, which the launcher removes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from e2e import sandbox
from e2e.cluster import containerd, dns, node_network, pki

NODE_NAME = "kuberl-node-0"
NODE_LABELS = {"kuberl.io/pool": "cpu", "kuberl.io/node": "real"}
NODE_BINARIES = ("kubelet", "kube-proxy", "coredns", "kuberl-pause")
HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip")


def missing_prerequisites(bin: Path) -> list[str]:
    """What this machine lacks for a real node (e2e/setup.sh installs all of it)."""
    import shutil

    missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
    missing += [f"{bin}/{b}" for b in NODE_BINARIES if not (bin / b).is_file()]
    missing += [f"CNI plugin {p}" for p in node_network.missing_cni_plugins()]
    if os.geteuid() != 0:
        missing.append("root (the kubelet, containerd and the bridge need it)")
    if not sandbox.inside():
        missing.append("a sandbox that ends it with the test (run inside `python -m e2e.sandbox.launch -- ...`)")
    return missing


def kubelet_config(*, ca: Path, serving: pki.Cert, sock: Path, port: int, healthz_port: int,
                   resolv_conf: Path, pod_logs: Path, cgroup_root: str) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": node_network.GATEWAY, "port": port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "tlsCertFile": str(serving.cert), "tlsPrivateKeyFile": str(serving.key),
        # The API server (logs, exec) authenticates with its kubelet-client certificate;
        # everyone else is judged by the API server (TokenReview / SubjectAccessReview).
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{sock}",
        # These machines run cgroup v1 without systemd as init. Pods go under the sandbox
        # run's own root (/kuberl/<run>, with memory and pids limits), never the host's
        # /kubepods, and the kubelet's orphan clean-up sees only its own run.
        "cgroupRoot": cgroup_root,
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        "clusterDNS": [node_network.GATEWAY], "clusterDomain": dns.CLUSTER_DOMAIN,
        # Pods with dnsPolicy Default get this, not the machine's resolver.
        "resolvConf": str(resolv_conf),
        # cadvisor cannot stat the overlay snapshotter's backing device here, so disk
        # signals are unknown: evict on memory only, never garbage-collect our images.
        "localStorageCapacityIsolation": False,
        "evictionHard": {"memory.available": "256Mi"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "rotateCertificates": False, "serverTLSBootstrap": False,
        "shutdownGracePeriod": "0s",
        "containerLogMaxSize": "10Mi",
        "podLogsDir": str(pod_logs),  # not /var/log/pods: everything in the work directory
        "nodeStatusUpdateFrequency": "5s",
    }


class RealNode:
    """One kubelet node; `prepare()` before the API server starts (it advertises the
    bridge address), `join()` once the plane is up, `stop()` always."""

    def __init__(self, plane) -> None:
        self.plane = plane
        self.dir = plane.workdir / "node"
        self.sock = containerd.socket_path(self.dir)
        self.containerd = containerd.Store(self.sock)
        self.sysctls: dict[str, str] = {}
        self.components: list = []
        self.storage = None

    # -- lifecycle -------------------------------------------------------------------

    def prepare(self) -> None:
        missing = missing_prerequisites(self.plane.bin)
        if missing:
            raise RuntimeError("a real node needs: " + ", ".join(missing) + " (run e2e/setup.sh as root)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sysctls = node_network.up()

    def join(self, ca: pki.Cert, server: str, kubeconfig_for, remaining) -> None:
        from e2e.cluster import controlplane as cp

        d = self.dir
        pkidir = self.plane.workdir / "pki"
        self._start_containerd(remaining)
        from e2e.images.build import Catalog

        catalog = Catalog(self.plane.bin)
        self.containerd.import_layout(catalog.layout("pause"), catalog.pause())

        kubelet_client = pki.issue(ca, pkidir, "kubelet", cn=f"system:node:{NODE_NAME}", orgs=("system:nodes",))
        serving = pki.issue(ca, pkidir, "kubelet-serving", cn=NODE_NAME,
                            server_sans=(f"IP:{node_network.GATEWAY}", f"DNS:{NODE_NAME}"))
        (d / "kubelet.kubeconfig").write_text(json.dumps(kubeconfig_for(f"system:node:{NODE_NAME}", kubelet_client)))
        resolv = d / "resolv.conf"
        resolv.write_text(f"nameserver {node_network.GATEWAY}\n")
        port, healthz = cp.free_port(), cp.free_port()
        (d / "kubelet.json").write_text(json.dumps(kubelet_config(
            ca=ca.cert, serving=serving, sock=self.sock, port=port, healthz_port=healthz, resolv_conf=resolv,
            pod_logs=d / "pod-logs", cgroup_root=sandbox.cgroup_root())))
        labels = ",".join(f"{k}={v}" for k, v in NODE_LABELS.items())
        kubelet = self._spawn("kubelet", [
            str(self.plane.bin / "kubelet"), f"--config={d / 'kubelet.json'}",
            f"--kubeconfig={d / 'kubelet.kubeconfig'}", f"--root-dir={d / 'kubelet'}",
            f"--cert-dir={d / 'kubelet-pki'}", f"--node-ip={node_network.GATEWAY}",
            f"--hostname-override={NODE_NAME}", f"--node-labels={labels}", "--v=1",
        ])
        # Pods reach the API server (through the kubernetes Service), the kubelet and DNS
        # on the node's own addresses; nothing else that listens there.
        node_network.guard_input([int(server.rsplit(":", 1)[1]), port])
        path = f"/api/v1/nodes/{NODE_NAME}"
        cp.wait_for(f"node {NODE_NAME} Ready and untainted",
                    lambda: self.plane.api.ok(path) and cp._node_schedulable(self.plane.api.request("GET", path)),
                    remaining(), [kubelet, *self.plane.components])

        proxy_cert = pki.issue(ca, pkidir, "kube-proxy", cn="system:kube-proxy")
        (d / "kube-proxy.kubeconfig").write_text(json.dumps(kubeconfig_for("system:kube-proxy", proxy_cert)))
        proxy = self._spawn("kube-proxy",
                            dns.kube_proxy_argv(self.plane.bin, d, NODE_NAME, cp.free_port(), cp.free_port()))
        self.proxy_ready = lambda: dns.kube_proxy_synced(d / "kube-proxy.log")
        cp.wait_for("kube-proxy's first sync", self.proxy_ready, remaining(), [proxy])

        dns_cert = pki.issue(ca, pkidir, "coredns", cn=dns.COREDNS_USER)
        (d / "coredns.kubeconfig").write_text(json.dumps(kubeconfig_for(dns.COREDNS_USER, dns_cert)))
        for obj in dns.coredns_rbac():
            self.plane.api.request("POST", obj.pop("_path"), obj)
        ready_port = cp.free_port()
        (d / "Corefile").write_text(dns.corefile(d / "coredns.kubeconfig", ready_port, cp.free_port()))
        coredns = self._spawn("coredns", [str(self.plane.bin / "coredns"), "-conf", str(d / "Corefile")])
        cp.wait_for("CoreDNS ready", lambda: cp._http_ok(f"http://127.0.0.1:{ready_port}/ready"), remaining(),
                    [coredns])

        from e2e.cluster import node_storage

        self.storage = node_storage.create(self.plane.api, d / "volumes", NODE_NAME)

    def stop(self) -> None:
        # The kubelet first, so nothing restarts the containers we kill; containerd last.
        for c in reversed(self.components):
            if c.name != "containerd":
                c.stop()
        kill_containers(self.dir)
        if any(c.name == "containerd" for c in self.components):
            self.containerd.forget_containers()
        for c in self.components:
            c.stop()
        self.components.clear()
        teardown_dir(self.dir, self.plane.bin)
        node_network.down(self.sysctls)
        self.sysctls = {}

    # -- pieces ----------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]):
        from e2e.cluster import controlplane as cp

        c = cp._Component(name, argv, self.dir / f"{name}.log")
        c.start(self.plane.die_with_parent)
        self.components.append(c)
        self.plane.record_state()
        return c

    def _start_containerd(self, remaining) -> None:
        from e2e.cluster import controlplane as cp

        conf, _ = containerd.write_config(self.dir)
        c = self._spawn("containerd", ["containerd", "--config", str(conf)])
        cp.wait_for("containerd", self.containerd.ready, remaining(), [c])
        self.containerd.forget_containers()  # what a killed run left in the cached root


def kill_containers(node_dir: Path) -> None:
    """Kill and delete every container runc knows under this node (pods and sandboxes)."""
    runc_root = node_dir / "containerd" / "state" / "runc"
    for ns_root in runc_root.glob("*") if runc_root.is_dir() else ():
        out = subprocess.run(["runc", "--root", str(ns_root), "list", "--quiet"], capture_output=True, text=True)
        for cid in out.stdout.split():
            subprocess.run(["runc", "--root", str(ns_root), "delete", "--force", cid], capture_output=True)


def _pids_with(fragment: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if fragment in proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def kill_shims(sock: Path) -> None:
    # containerd's shims detach from it (their own session) to outlive restarts.
    for pid in _pids_with(f"-address {sock} "):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def unmount_under(root: Path) -> None:
    """Lazily unmount every mount below `root`, deepest first (overlay rootfs, netns, shm)."""
    prefix = str(root.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


def teardown_dir(node_dir: Path, bin: Path) -> None:
    """What outlives the node's daemons: containers, shims, mounts, Service rules, the
    bridge. Also run by `controlplane.py down` for a node whose harness exited."""
    kill_containers(node_dir)
    kill_shims(node_dir / "containerd" / "containerd.sock")
    unmount_under(node_dir)
    if (bin / "kube-proxy").is_file():
        # kube-proxy's nat rules outlive it; removing them is what --cleanup is for.
        subprocess.run([str(bin / "kube-proxy"), "--cleanup"], capture_output=True)
    node_network.down({})
