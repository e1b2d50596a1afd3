"""End to end on a real node: pods the operator builds run in containers (containerd +
runc on this machine), from images built here from the repository's Dockerfiles.

The `node_kube` plane (tests/support/fixtures_node.py) has one real kubelet node as its CPU
pool and a kwok GPU node beside it. The chart is installed with the laptop stack, so the
operator, NATS JetStream and SeaweedFS are real containers as well; the tiny example then
trains for real, and the tests watch what a user would: the job's status and events,
`kubectl get rlj`, `kubectl logs`, and what deleting pods mid-run does.
"""

from __future__ import annotations

import json

import pytest

from e2e.cluster.node import NODE_NAME
from e2e.cluster.node_network import POD_SUBNET
from e2e.in_sandbox.node_chaos import audit_job, job_run_files
from e2e.in_sandbox.node_support import (
    MAX_STEPS,
    RELEASE,
    RELEASE_NS,
    _ns,
    _pod_phase,
    copy_stack_credentials,
    diagnostics,
    tiny_job_on_the_node,
)
from kuberl.workloads.rollout.load_records import load_sources
from tests.support.fixtures_cluster import Kube, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

RESTRICTED = {"runAsNonRoot": True, "runAsUser": 65532, "allowPrivilegeEscalation": False,
              "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
              "seccompProfile": {"type": "RuntimeDefault"}}


# -- the node itself ---------------------------------------------------------------------

def test_a_real_node_stops_without_leaving_anything_behind():
    """Containers, shims, mounts, network namespaces, Service rules and the bridge all go
    with the node. First in this module: the session's node_kube holds the bridge later."""
    import subprocess

    from e2e.cluster import controlplane, node_network
    from e2e.cluster.containerd import PAUSE_IMAGE
    from e2e.cluster.node import _pids_with as pids_with

    plane = controlplane.ControlPlane(bin=controlplane.ensure_built(), cpu_nodes=0, gpu_nodes=0, real_node=True)
    plane.start()
    try:
        kube = Kube(plane.kubeconfig, plane.kubectl_path)
        ns = _ns(kube, "teardown")
        kube.core.create_namespaced_pod(ns, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
                                             "spec": {"containers": [{"name": "c", "image": PAUSE_IMAGE,
                                                                      "imagePullPolicy": "Never"}]}})
        wait_until("a container running",
                   lambda: kube.core.read_namespaced_pod("sleeper", ns).status.phase == "Running",
                   timeout=120)
        workdir = plane.workdir
        assert pids_with(str(workdir)) and node_network.bridge_exists()
    finally:
        plane.stop()
    assert not node_network.bridge_exists()
    assert not pids_with(str(workdir)), "processes of the node outlived it"
    assert not [m for m in open("/proc/self/mounts").read().splitlines() if str(workdir) in m]
    nat = subprocess.run(["iptables", "-w", "5", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    assert "KUBE-SERVICES" not in nat and node_network.EGRESS_CHAIN not in subprocess.run(
        ["iptables", "-w", "5", "-S"], capture_output=True, text=True).stdout
    assert not workdir.exists()


def test_the_cached_containerd_root_keeps_only_this_builds_images(node_kube: Kube):
    """The node's containerd root is cached across runs (~/.cache/kuberl/containerd). At a
    node's start every image record that points at none of this build's images is removed,
    the CRI plugin's ``sha256:`` records of earlier builds included (they kept 1.2 GB of
    layers per workload-image build), so the garbage collector frees what they held."""
    from e2e.images.build import NODE_IMAGES

    store = node_kube.plane.node.containerd
    targets = store.image_targets()
    ours = {targets[node_kube.images[name]] for name in NODE_IMAGES}
    assert set(targets.values()) <= ours, {ref: d for ref, d in targets.items() if d not in ours}


PROBE = """
import json, socket, ssl, urllib.request
host = "kubernetes.default.svc.cluster.local"
ip = socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP)[0][4][0]
ctx = ssl.create_default_context(cafile="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
token = open("/var/run/secrets/kubernetes.io/serviceaccount/token").read()
req = urllib.request.Request(f"https://{host}/version", headers={"Authorization": f"Bearer {token}"})
version = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))["gitVersion"]
try:
    socket.getaddrinfo("pypi.org", 443)
    outside = "resolved"
except socket.gaierror:
    outside = "unresolved"
print(json.dumps({"service_ip": ip, "version": version, "outside": outside}))
"""


def test_a_pod_runs_in_a_container_and_reaches_the_api_through_service_and_dns(node_kube: Kube):
    """The workload image runs as the restricted user on the real node; the pod resolves
    the kubernetes Service through the cluster DNS and reaches it through kube-proxy;
    names outside the cluster do not resolve (pods never use the machine's resolver)."""
    ns = _ns(node_kube, "node-smoke")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
           "spec": {"restartPolicy": "Never", "nodeSelector": {"kuberl.io/pool": "cpu"},
                    "containers": [{"name": "probe", "image": node_kube.images["workload-cpu"],
                                    "imagePullPolicy": "Never", "command": ["python", "-c", PROBE],
                                    "securityContext": RESTRICTED}]}}
    node_kube.core.create_namespaced_pod(ns, pod)
    phase = wait_until("probe pod finished", lambda: _pod_phase(node_kube, ns, "probe"), timeout=180)
    logs = node_kube.kubectl("logs", "-n", ns, "probe").stdout
    assert phase == "Succeeded", logs
    seen = json.loads(logs.strip().splitlines()[-1])
    live = node_kube.core.read_namespaced_pod("probe", ns)
    assert live.spec.node_name == NODE_NAME
    assert live.status.pod_ip.startswith(POD_SUBNET.rsplit(".", 1)[0] + ".")
    assert seen["service_ip"] == node_kube.core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    assert seen["version"].startswith("v1.")
    assert seen["outside"] == "unresolved"


# -- the chart with the laptop stack, and the tiny example trained for real ---------------

def test_chart_runs_the_operator_and_the_stack_in_real_containers(release: Kube):
    for name in (f"deployment/{RELEASE}-operator", f"statefulset/{RELEASE}-nats", f"statefulset/{RELEASE}-s3"):
        obj = release.get_json("-n", RELEASE_NS, name)
        assert obj["status"].get("readyReplicas") == obj["spec"]["replicas"], (name, obj["status"])
    pods = release.core.list_namespaced_pod(RELEASE_NS).items
    assert pods and all(p.spec.node_name == NODE_NAME for p in pods if p.status.phase == "Running")
    # Structured logs from the operator's container: every line a JSON object.
    logs = release.kubectl("logs", "-n", RELEASE_NS, f"deployment/{RELEASE}-operator", "--tail=20").stdout
    lines = [line for line in logs.splitlines() if line.strip()]
    assert lines and all(isinstance(json.loads(line), dict) for line in lines), logs[-2000:]


def test_tiny_example_trains_in_containers_and_survives_deleted_pods(release: Kube):
    try:
        _train_tiny_job(release)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{diagnostics(release, ('node-tiny', RELEASE_NS))}") from None


def _train_tiny_job(release: Kube) -> None:
    kube = release
    ns = _ns(kube, "node-tiny")
    copy_stack_credentials(kube, ns)
    job = tiny_job_on_the_node(ns)
    name = job["metadata"]["name"]
    kube.custom.create_namespaced_custom_object("kuberl.io", "v1alpha1", ns, "rljobs", job)

    seen: list[dict] = []
    loaded: list[int] = []  # policy versions the rollout pool's status said its pods had loaded

    def status() -> dict:
        st = kube.custom.get_namespaced_custom_object("kuberl.io", "v1alpha1", ns, "rljobs", name).get("status") or {}
        if st.get("phase") == "Failed":
            raise AssertionError(f"RLJob failed: {json.dumps(st, indent=1)}")
        if st.get("step") is not None:
            seen.append(st)
            for pool in kube.custom.list_namespaced_custom_object("kuberl.io", "v1alpha1", ns, "rolloutpools")["items"]:
                loaded.extend((pool.get("status") or {}).get("policyVersions") or [])
        return st

    wait_until("training past the first checkpoints", lambda: (status().get("step") or 0) >= 45, timeout=900,
               interval=1)

    # A deleted trainer pod: the gang restarts and resumes from the last checkpoint.
    trainer = f"{name}-trainer-0"
    kube.core.delete_namespaced_pod(trainer, ns)
    wait_until("the gang restarted", lambda: (status().get("restarts") or 0) >= 1, timeout=120, interval=2)
    # A deleted rollout pod: its ReplicaSet replaces it.
    sel = "kuberl.io/role=rollout"  # the namespace holds this job's pool only
    before = {p.metadata.name for p in kube.core.list_namespaced_pod(ns, label_selector=sel).items}
    assert before, "no rollout pod"
    kube.core.delete_namespaced_pod(sorted(before)[0], ns)
    wait_until("a replacement rollout pod Running", lambda: any(
        p.metadata.name not in before and p.status.phase == "Running"
        for p in kube.core.list_namespaced_pod(ns, label_selector=sel).items), timeout=180, interval=2)

    final = wait_until("RLJob Succeeded", lambda: (st := status()).get("phase") == "Succeeded" and st,
                       timeout=1500, interval=3)
    # The ledger of both trainer pods and the loads of both agent pods, read from the store
    # after the pods are gone: the deletions lost no prompt and trained none twice.
    audit, _ = audit_job(kube, ns, job)
    assert audit.finished and audit.restarts >= 1 and audit.steps == MAX_STEPS, audit
    # The two agents on the node downloaded each version once between them: one from the
    # store for the node, the other a copy from it (weightFetch perNode).
    sources = load_sources(job_run_files(kube, ns, job))
    assert sources.get("store-claimed", 0) >= 3 and sources.get("relay", 0) >= 3, sources
    assert audit.zeros() == dict.fromkeys(audit.zeros(), 0), audit
    steps = [s["step"] for s in seen]
    assert final["step"] >= MAX_STEPS and max(steps) >= MAX_STEPS
    rewards = [float(s["reward"]["mean"]) for s in seen if (s.get("reward") or {}).get("mean") is not None]
    assert len(rewards) >= 3 and max(rewards[len(rewards) // 2:]) > min(rewards[:3]), rewards

    trainer_log = kube.kubectl("logs", "-n", ns, trainer, check=False).stdout
    events = {e.reason: e.message for e in kube.core.list_namespaced_event(ns).items}
    assert "GangRestart" in events and "were deleted" in events["GangRestart"], events
    # The restarted trainer resumed from a checkpoint, not from step 0 and not from the end:
    # the deleted one stopped on SIGTERM instead of training on through its grace period.
    resumed = [json.loads(line) for line in trainer_log.splitlines() if "resumed from checkpoint" in line]
    assert resumed and 20 <= resumed[0]["step"] < MAX_STEPS, trainer_log[-3000:]
    for line in [x for x in trainer_log.splitlines() if x.strip()][:50]:
        assert isinstance(json.loads(line), dict), line

    # kubectl get rlj shows the printer columns with live values.
    table = kube.kubectl("get", "rlj", "-n", ns, name).stdout.splitlines()
    header, row = table[0].split(), table[1].split()
    assert "PHASE" in header and "STEP" in header, table
    assert row[header.index("PHASE")] == "Succeeded" and int(row[header.index("STEP")]) >= MAX_STEPS, table
    # The pool's status showed the policy versions its pods loaded, rising as weights synced.
    assert len(set(loaded)) >= 3 and max(loaded) > min(loaded), loaded
