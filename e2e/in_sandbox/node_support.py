"""Plain helpers of the real-node suite (e2e/in_sandbox): the chart release's names,
namespaces, diagnostics, helm, and the tiny example adapted to the node. The `release`
fixture (conftest.py, shared by every module of the suite) calls `install_release`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.support.fixtures_cluster import EXAMPLES_DIR, Kube, wait_until

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kuberl"
NODE_VALUES = REPO / "e2e" / "node-values.yaml"
RELEASE, RELEASE_NS = "kuberl", "kuberl-system"
STACK_CREDENTIALS = "kuberl-stack-credentials"  # the Secret a job's namespace gets a copy of


def _split(ref: str) -> tuple[str, str]:
    repo, _, tag = ref.rpartition(":")
    return repo, tag


def _ns(kube: Kube, name: str) -> str:
    kube.kubectl("create", "namespace", name, check=False)
    wait_until(f"default service account in {name}", lambda: kube.core.list_namespaced_service_account(
        name, field_selector="metadata.name=default").items, timeout=30)
    return name


def _pod_phase(kube: Kube, ns: str, name: str) -> str | None:
    pod = kube.core.read_namespaced_pod(name, ns)
    return pod.status.phase if pod.status.phase in ("Succeeded", "Failed") else None


def diagnostics(kube: Kube, namespaces: tuple[str, ...] = (RELEASE_NS,)) -> str:
    """What to read when something on the node does not come up: pods, events, log tails."""
    out = [kube.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout]
    for ns in namespaces:
        out.append(kube.kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False).stdout[-3000:])
        for pod in kube.core.list_namespaced_pod(ns).items:
            logs = kube.kubectl("logs", "-n", ns, pod.metadata.name, "--all-containers", "--tail=15", check=False)
            out.append(f"--- {ns}/{pod.metadata.name}\n{(logs.stdout + logs.stderr)[-2500:]}")
    return "\n".join(out)


def _helm(kube: Kube, *args: str, timeout: float = 600) -> str:
    import subprocess

    proc = subprocess.run([str(kube.kubectl_path.with_name("helm")), "--kubeconfig", str(kube.kubeconfig), *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}\n{diagnostics(kube)}"
    return proc.stdout


def install_release(kube: Kube) -> Kube:
    """The chart with the laptop stack, from the images built here (node-values.yaml)."""
    images = kube.images
    sets = {"image.repository": _split(images["operator"])[0], "image.tag": _split(images["operator"])[1],
            "workloads.image": images["workload-cpu"],
            "stack.nats.image.repository": _split(images["nats"])[0], "stack.nats.image.tag": _split(images["nats"])[1],
            "stack.s3.image.repository": _split(images["seaweedfs"])[0],
            "stack.s3.image.tag": _split(images["seaweedfs"])[1]}
    _ns(kube, RELEASE_NS)
    _helm(kube, "upgrade", "--install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "-f", str(NODE_VALUES),
          *[f"--set={k}={v}" for k, v in sets.items()], "--wait", "--timeout", "5m")
    return kube


def copy_stack_credentials(kube: Kube, ns: str) -> None:
    """The release's stack credentials (NATS and S3 keys), as the Secret a job in ``ns`` names."""
    stack = kube.core.read_namespaced_secret(f"{RELEASE}-stack-credentials", RELEASE_NS)
    kube.core.create_namespaced_secret(ns, {"metadata": {"name": STACK_CREDENTIALS},
                                            "data": {k: v for k, v in stack.data.items() if k != "s3.json"}})


MAX_STEPS = 200  # ~3 steps/s here: long enough to delete pods mid-run


def tiny_job_on_the_node(namespace: str) -> dict:
    """examples/tiny-cpu.yaml, pointed at the stack and sized for a 2-core node."""
    job = yaml.safe_load((EXAMPLES_DIR / "tiny-cpu.yaml").read_text())
    spec = job["spec"]
    spec["buffer"] = {"credentialsSecret": {"name": STACK_CREDENTIALS}}
    spec["weightStore"].update(endpoint=f"http://{RELEASE}-s3.{RELEASE_NS}:8333",
                               credentialsSecret={"name": STACK_CREDENTIALS})
    small = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}
    spec["trainer"]["resources"] = small
    # Two agents on the one node: one downloads each version, the other copies it from it
    # (weightFetch perNode); their quarter cores fit beside the trainer and the stack.
    spec["rollout"]["template"].update(replicas=2, minReplicas=2, maxReplicas=2,
                                       resources={"requests": {"cpu": "250m", "memory": "1Gi"},
                                                  "limits": {"memory": "4Gi"}})
    spec["runPolicy"]["maxSteps"] = MAX_STEPS
    spec["checkpoint"]["intervalSteps"] = 20
    spec["evaluation"]["intervalSteps"] = 100
    return job
