"""End to end: the Helm chart installs into a real cluster and runs the tiny RLJob to
Succeeded, with the operator holding only the chart's RBAC.

Two clusters, one suite:
* the local control plane (CI; the `kube` fixture starts it): the chart is applied
  with --dry-run=server, then installed; its operator pods are kwok fakes, so the test
  runs the real operator (`kuberl operator`) as a local process whose kubeconfig holds a
  token issued for the chart's ServiceAccount (TokenRequest API) — anything the RBAC
  lacks fails the run — and drives the trainer pods to Succeeded through kwok;
* kind ($KUBECONFIG names it; e2e/kind-e2e.sh sets it up): the chart runs the operator
  image in the cluster with the laptop stack, and the trainer really trains.
"""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from kuberl.workloads.localproc import dies_with_parent, stop_group
from tests.support.fixtures_cluster import EXAMPLES_DIR, Kube, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "kuberl"
KIND_VALUES = REPO / "e2e" / "kind-values.yaml"
RELEASE = "kuberl"
RELEASE_NS = "kuberl-system"  # the RLJob default spec.buffer.url points into it
SA = "kuberl-operator"
KUBERL = Path(sys.executable).with_name("kuberl")
TINY = EXAMPLES_DIR / "tiny-cpu.yaml"
TRAINER_LABELS = "kuberl.io/role=trainer"


def helm(kube: Kube, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(kube.kubectl_path.with_name("helm")), "--kubeconfig", str(kube.kubeconfig), *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def fake_nodes(kube: Kube) -> bool:
    """kwok nodes: no kubelet, so no operator container; pods obey kuberl.io/fake-phase."""
    return bool(getattr(kube, "kwok", getattr(kube, "local", False)))


def values_args(kube: Kube) -> list[str]:
    return [] if fake_nodes(kube) else ["-f", str(KIND_VALUES)]


@pytest.fixture(scope="module")
def release_ns(kube: Kube) -> str:
    kube.kubectl("create", "namespace", RELEASE_NS, check=False)
    wait_until(f"default service account in {RELEASE_NS}",
               lambda: kube.core.list_namespaced_service_account(
                   RELEASE_NS, field_selector="metadata.name=default").items, timeout=30)
    return RELEASE_NS


@pytest.fixture(scope="module")
def installed(kube: Kube, release_ns: str) -> dict:
    """The chart, installed (or upgraded) for real; returns the live operator Deployment."""
    helm(kube, "upgrade", "--install", RELEASE, str(CHART), "--namespace", release_ns,
         "--wait", "--timeout", "5m", *values_args(kube))
    return kube.get_json("-n", release_ns, f"deployment/{SA}")


# -- install -------------------------------------------------------------------------------

def test_rendered_chart_applies_with_server_dry_run(kube: Kube, release_ns: str):
    rendered = helm(kube, "template", RELEASE, str(CHART), "--namespace", release_ns, "--include-crds",
                    *values_args(kube)).stdout
    out = kube.kubectl("apply", "--dry-run=server", "--server-side", "--force-conflicts",
                       "--field-manager=kuberl-e2e", "-f", "-", input=rendered)
    applied = [line for line in out.stdout.splitlines() if line.strip()]
    kinds = {line.split("/")[0].split(".")[0] for line in applied}
    assert {"customresourcedefinition", "deployment", "serviceaccount", "clusterrole", "clusterrolebinding",
            "service", "poddisruptionbudget"} <= kinds, out.stdout
    assert "clusterkopfpeerings.kopf.dev" in out.stdout, out.stdout


def test_chart_installs_and_the_operator_deployment_becomes_available(kube: Kube, installed: dict):
    status = installed["status"]
    assert status.get("availableReplicas") == installed["spec"]["replicas"] == 2, status
    notes = helm(kube, "get", "notes", RELEASE, "--namespace", RELEASE_NS).stdout
    assert f"deployment/{SA}" in notes
    for crd in ("rljobs.kuberl.io", "rolloutpools.kuberl.io", "agentenvs.kuberl.io"):
        kube.kubectl("get", f"crd/{crd}")


# -- RBAC: not broader than needed ---------------------------------------------------------

ALLOWED = [
    ("patch", "rljobs.kuberl.io", "{ns}"), ("patch", "rljobs.kuberl.io/status", "{ns}"),
    ("create", "rolloutpools.kuberl.io", "{ns}"),
    ("patch", "rolloutpools.kuberl.io/status", "{ns}"), ("delete", "rljobs.kuberl.io", "{ns}"),
    ("create", "pods", "{ns}"), ("delete", "pods", "{ns}"), ("list", "pods", ""), ("watch", "pods", ""),
    # By name only: the Secrets a job names (its NATS credentials; missing ones are reported).
    ("get", "secrets", "{ns}"),
    ("create", "services", "{ns}"), ("create", "configmaps", "{ns}"), ("create", "deployments.apps", "{ns}"),
    ("create", "networkpolicies.networking.k8s.io", "{ns}"), ("create", "events", "{ns}"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("patch", "clusterkopfpeerings.kopf.dev/kuberl", ""), ("watch", "clusterkopfpeerings.kopf.dev", ""),
]
DENIED = [
    ("create", "rljobs.kuberl.io", "{ns}"), ("list", "secrets", ""), ("list", "secrets", "{ns}"),
    ("watch", "secrets", "{ns}"), ("create", "secrets", "{ns}"),
    ("update", "rolloutpools.kuberl.io/scale", "{ns}"), ("update", "deployments.apps", "{ns}"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", ""),
    ("create", "rolebindings.rbac.authorization.k8s.io", "{ns}"),
    ("bind", "clusterroles.rbac.authorization.k8s.io", ""),
    ("escalate", "roles.rbac.authorization.k8s.io", "{ns}"), ("impersonate", "serviceaccounts", "{ns}"),
    ("create", "pods/exec", "{ns}"), ("create", "serviceaccounts/token", "{ns}"),
    ("get", "nodes", ""), ("delete", "namespaces", ""), ("patch", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("patch", "clusterkopfpeerings.kopf.dev/someone-else", ""), ("update", "leases.coordination.k8s.io", "{ns}"),
    ("deletecollection", "pods", "{ns}"), ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", ""),
]


def _can_i(kube: Kube, verb: str, resource: str, ns: str) -> bool:
    # `can-i VERB pods/exec` would ask about a pod *named* exec: "kind/sub" here is a
    # subresource unless the kind is a peering object ("kind/name").
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource + (f"/{sub}" if sub and "kopfpeerings" in resource else ""),
            f"--as=system:serviceaccount:{RELEASE_NS}:{SA}"]
    args += [f"--subresource={sub}"] if sub and "kopfpeerings" not in resource else []
    args += ["-n", ns] if ns else ["--all-namespaces"]
    return kube.kubectl(*args, check=False).stdout.strip() == "yes"


def test_operator_account_can_do_its_job_and_no_more(kube: Kube, installed: dict, namespace: str):
    fill = lambda ns: ns.format(ns=namespace)  # noqa: E731
    missing = [c for c in ALLOWED if not _can_i(kube, c[0], c[1], fill(c[2]))]
    excess = [c for c in DENIED if _can_i(kube, c[0], c[1], fill(c[2]))]
    assert not missing, f"the chart's RBAC lacks {missing}"
    assert not excess, f"the chart's RBAC grants {excess}"


# -- the operator on the chart's ServiceAccount token reconciles the tiny example ----------

def sa_kubeconfig(kube: Kube, tmp: Path) -> Path:
    """A kubeconfig whose only credential is a token the API server issues for the
    chart's ServiceAccount (TokenRequest), as a pod of the Deployment would mount."""
    tr = kube.core.create_namespaced_service_account_token(
        SA, RELEASE_NS, {"spec": {"expirationSeconds": 3600, "audiences": []}})
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "sa",
           "clusters": [{"name": "c", "cluster": cluster}],
           "users": [{"name": SA, "user": {"token": tr.status.token}}],
           "contexts": [{"name": "sa", "context": {"cluster": "c", "user": SA, "namespace": RELEASE_NS}}]}
    path = tmp / "operator-sa.kubeconfig"
    path.write_text(json.dumps(cfg))
    path.chmod(0o600)
    return path


def operator_process_env(deployment: dict, kubeconfig: Path, ports: tuple[int, int]) -> tuple[list[str], dict]:
    """The command and environment of the chart's operator container, as a local process."""
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    argv = [str(KUBERL), *c["command"][1:], *c.get("args", [])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERL_")}
    field = {"metadata.name": f"e2e-local-{uuid.uuid4().hex[:6]}", "metadata.namespace": RELEASE_NS}
    for e in c.get("env", []):
        env[e["name"]] = field[e["valueFrom"]["fieldRef"]["fieldPath"]] if "valueFrom" in e else e.get("value", "")
    env["KUBERL_METRICS_PORT"], env["KUBERL_HEALTH_PORT"] = (str(p) for p in ports)
    env["KUBERL_LOG_FORMAT"] = "json"
    env["KUBECONFIG"] = str(kubeconfig)
    return argv, env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _operator_available() -> str | None:
    proc = subprocess.run([str(KUBERL), "operator", "--help"], capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


def _rljob(kube: Kube, ns: str, name: str) -> dict:
    return kube.custom.get_namespaced_custom_object("kuberl.io", "v1alpha1", ns, "rljobs", name)


def _tiny_job(nats_url: str | None, s3_url: str) -> dict:
    job = yaml.safe_load(TINY.read_text())
    if nats_url:
        job["spec"].setdefault("buffer", {})["url"] = nats_url
    job["spec"]["weightStore"]["endpoint"] = s3_url
    return job


@pytest.fixture
def local_operator(kube: Kube, installed: dict, tmp_path: Path):
    """`kuberl operator` with the chart's settings and only the chart's ServiceAccount token."""
    if not fake_nodes(kube):
        yield None  # kind: the chart's own Deployment runs the operator image
        return
    why = _operator_available()
    if why:
        pytest.skip(f"`kuberl operator` is not available yet (issue 6): {why}")
    ports = (_free_port(), _free_port())
    argv, env = operator_process_env(installed, sa_kubeconfig(kube, tmp_path), ports)
    log = tmp_path / "operator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=dies_with_parent())
    try:
        wait_until("operator health endpoint",
                   lambda: proc.poll() is not None or _http_ok(f"http://127.0.0.1:{ports[1]}/healthz"), timeout=60)
        assert proc.poll() is None, f"operator exited {proc.returncode}:\n{log.read_text()[-4000:]}"
        yield proc, log, ports
    finally:
        stop_group(proc, signal.SIGTERM, 20)


def test_tiny_example_runs_to_succeeded_with_the_charts_rbac(kube: Kube, namespace: str, local_operator,
                                                             request: pytest.FixtureRequest):
    if fake_nodes(kube):
        nats = request.getfixturevalue("nats_server")
        s3 = request.getfixturevalue("s3_server")
        job = _tiny_job(nats.url, s3.endpoint)
    else:
        # The laptop stack requires its credentials: a copy of the chart's Secret in the
        # job's namespace, named by both credentialsSecret fields.
        job = _tiny_job(None, f"http://{RELEASE}-s3.{RELEASE_NS}:8333")
        stack = kube.core.read_namespaced_secret(f"{RELEASE}-stack-credentials", RELEASE_NS)
        kube.core.create_namespaced_secret(namespace, {"metadata": {"name": "kuberl-stack-credentials"},
                                                      "data": {k: v for k, v in stack.data.items() if k != "s3.json"}})
        job["spec"].setdefault("buffer", {})["credentialsSecret"] = {"name": "kuberl-stack-credentials"}
        job["spec"]["weightStore"]["credentialsSecret"] = {"name": "kuberl-stack-credentials"}
    name = job["metadata"]["name"]
    kube.custom.create_namespaced_custom_object("kuberl.io", "v1alpha1", namespace, "rljobs", job)

    if fake_nodes(kube):
        _, log, ports = local_operator
        selector = f"kuberl.io/job={name},{TRAINER_LABELS}"
        replicas = job["spec"]["trainer"]["replicas"]

        def trainer_pods_running():
            pods = kube.core.list_namespaced_pod(namespace, label_selector=selector).items
            live = [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
            return live if len(live) == replicas else None

        pods = wait_until("trainer gang Running", trainer_pods_running, timeout=120)
        # kwok has no containers to exit: the trainer "finishes" when we say so.
        for pod in pods:
            kube.core.patch_namespaced_pod(pod.metadata.name, namespace,
                                           {"metadata": {"annotations": {"kuberl.io/fake-phase": "Succeeded"}}})
        timeout = 120
    else:
        timeout = 1200  # kind: the trainer really trains (examples/tiny-cpu.yaml: minutes on a laptop)

    def phase():
        st = _rljob(kube, namespace, name).get("status") or {}
        if st.get("phase") == "Failed":
            raise AssertionError(f"RLJob failed: {json.dumps(st, indent=1)}")
        return st if st.get("phase") == "Succeeded" else None

    status = wait_until("RLJob Succeeded", phase, timeout=timeout, interval=1.0)
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    assert conditions["Succeeded"]["status"] == "True", conditions

    if fake_nodes(kube):
        text = log.read_text(errors="replace")
        # Every API call the reconcile needed was allowed by the chart's RBAC.
        # A whole-word 403: a timestamp such as 00:03:01.716403Z is not a denial (seen in a run).
        forbidden = [line for line in text.splitlines() if re.search(r"\b403\b|forbidden", line, re.IGNORECASE)]
        assert not forbidden, "operator hit RBAC denials:\n" + "\n".join(forbidden[:20])
        # Leader election ran on the same token: the operator created and joined its peering object.
        peering = kube.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "kuberl")
        assert peering.get("status"), peering
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/metrics", timeout=5).read().decode()
        assert "kuberl_" in metrics
