"""End to end on the real node: an RLJob whose reward comes from an inline AgentEnv.

The tiny job of test_real_node.py (decoupled, the pure-torch model, CPU), with reward
`agentEnv: calculator` and an inline `calculator-tool` AgentEnv. The operator creates the
AgentEnv, its Deployment and Service; the env pod runs the reference server
(workloads/agentenv) in a container on the node, and the rollout pods run every episode
against it: a reset through its Service, steps to the replica the reset named. The job runs
to Succeeded. Learning is not asked for here.

What the test reads, as a user could: the env pod (where it ran, Ready), its log (the
server logs its settings at start, and nothing per episode: no access log), its `/stats`
counters read through the Service from inside a rollout pod (`kubectl exec`), and the
job's status. The tiny model never writes a tool call itself (an action that starts with
`c:`: none in 3,200 samples, fresh or warm-started), so the test plays one tool turn
against the Service from the same pod, after reading the counters the agents left.
"""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from e2e.cluster.node import NODE_NAME
from e2e.in_sandbox.node_support import RELEASE_NS, _ns, copy_stack_credentials, diagnostics, tiny_job_on_the_node
from tests.support.fixtures_cluster import Kube, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

ENV = "calculator"
AGENTIC_STEPS = 30  # 128 episodes a step; `kuberl run` of this job: about 0.5 s a step on 2 cores
GROUP, VERSION = "kuberl.io", "v1alpha1"


def agentic_job_on_the_node(namespace: str) -> dict:
    """The node's tiny job, scored by an inline calculator-tool AgentEnv (one small replica)."""
    job = tiny_job_on_the_node(namespace)
    job["metadata"]["name"] = "tiny-calculator"
    spec = job["spec"]
    spec["reward"] = {"type": "agentEnv", "agentEnv": ENV}
    spec["agentEnvs"] = [{"name": ENV, "spec": {
        "task": "calculator-tool", "replicas": 1,
        # A rollout pod runs 8 groups of 8 episodes at once, the trainer's evaluation 100 more.
        "concurrencyPerReplica": 256, "episodeTimeoutSeconds": 60,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}}}]
    spec["algorithm"]["maxResponseLength"] = 8  # room for a tool call such as c:12*34
    spec["runPolicy"]["maxSteps"] = AGENTIC_STEPS
    spec["checkpoint"]["intervalSteps"] = 10
    spec["evaluation"]["intervalSteps"] = AGENTIC_STEPS  # once, after the last step (through the env too)
    return job


# Run in a rollout pod: the env's counters through its Service (before anything of the
# test's own), then one calculator episode of the test's: a tool call, then the answer.
TOOL_TURN = """
import json, sys, urllib.request
base = sys.argv[1]
def call(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=15) as resp:
        return json.load(resp)
stats = call("GET", base + "/stats")
ep = call("POST", base + "/episodes", {"prompt": "12*34+5=", "answer": "413"})
owner = (ep.get("endpoint") or base).rstrip("/")
tool = call("POST", f"{owner}/episodes/{ep['episode_id']}/step", {"action": "c:12*34"})
answer = call("POST", f"{owner}/episodes/{ep['episode_id']}/step", {"action": "413"})
call("DELETE", f"{owner}/episodes/{ep['episode_id']}")
print(json.dumps({"stats": stats, "owner": owner, "tool": tool, "answer": answer}))
"""


def test_an_inline_agent_env_serves_the_rollout_pods_on_the_node(release: Kube):
    ns = _ns(release, "node-agentic")
    try:
        _run_agentic_job(release, ns)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{diagnostics(release, (ns, RELEASE_NS))}") from None


def _ready(pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _run_agentic_job(kube: Kube, ns: str) -> None:
    copy_stack_credentials(kube, ns)
    job = agentic_job_on_the_node(ns)
    name = job["metadata"]["name"]
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "rljobs", job)

    env_pods: dict[str, dict] = {}  # name -> node, pod IP, ever Ready
    probe: dict = {}  # what TOOL_TURN printed, from the first run that succeeded
    env_log: list[str] = []
    tries: list[str] = []

    def watch_env_pods() -> None:
        for pod in kube.core.list_namespaced_pod(ns, label_selector=f"kuberl.io/agent-env={ENV}").items:
            seen = env_pods.setdefault(pod.metadata.name, {"node": None, "ip": None, "ready": False})
            seen["node"] = pod.spec.node_name or seen["node"]
            seen["ip"] = pod.status.pod_ip or seen["ip"]
            seen["ready"] = seen["ready"] or _ready(pod)

    def read_env(endpoint: str) -> None:
        """Once episodes have been trained on: the counters and a tool turn (from a rollout
        pod), and the env pod's log. Both pods go when the job ends, so this runs meanwhile."""
        agents = [p for p in kube.core.list_namespaced_pod(ns, label_selector="kuberl.io/role=rollout").items
                  if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
        if not agents:
            return
        run = kube.kubectl("exec", "-n", ns, agents[0].metadata.name, "--", "python", "-c", TOOL_TURN, endpoint,
                           check=False, timeout=60)
        try:
            assert run.returncode == 0
            probe.update(json.loads(run.stdout.strip().splitlines()[-1]))
        except (AssertionError, IndexError, ValueError):
            tries.append(f"exec in {agents[0].metadata.name}: rc {run.returncode}: {(run.stdout + run.stderr)[-1500:]}")
            return
        for pod in env_pods:
            logs = kube.kubectl("logs", "-n", ns, pod, check=False)
            env_log.append(logs.stdout + logs.stderr)

    def status() -> dict:
        st = kube.custom.get_namespaced_custom_object(GROUP, VERSION, ns, "rljobs", name).get("status") or {}
        if st.get("phase") == "Failed":
            raise AssertionError(f"RLJob failed: {json.dumps(st, indent=1)}")
        watch_env_pods()
        return st

    def env_endpoint() -> str | None:
        status()
        try:
            env = kube.custom.get_namespaced_custom_object(GROUP, VERSION, ns, "agentenvs", ENV)
        except ApiException as e:
            if e.status == 404:  # the job's controller has not created it yet
                return None
            raise
        return (env.get("status") or {}).get("endpoint")

    endpoint = wait_until("the AgentEnv's endpoint", env_endpoint, timeout=120, interval=1)
    assert endpoint == f"http://{ENV}.{ns}.svc:8080", endpoint

    def trained_and_read() -> bool:
        st = status()
        if (st.get("step") or 0) >= 1 and not probe and st.get("phase") != "Succeeded":
            read_env(endpoint)
        return bool(probe) or st.get("phase") == "Succeeded"

    wait_until("a first step trained, and the env read through its Service", trained_and_read, timeout=900,
               interval=0.5)
    assert probe, f"the env was never read while the job ran ({len(tries)} tries; the last ones: {tries[-3:]})"
    final = wait_until("RLJob Succeeded", lambda: (st := status()).get("phase") == "Succeeded" and st,
                       timeout=900, interval=2)

    # The env pod ran in a container on the real node and passed its readiness probe.
    assert env_pods and all(p["node"] == NODE_NAME for p in env_pods.values()), env_pods
    assert any(p["ready"] for p in env_pods.values()), env_pods
    # Its server started with the job's settings (workloads/agentenv/__main__.py logs them;
    # it logs nothing per episode).
    started = [json.loads(line) for log in env_log for line in log.splitlines()
               if line.startswith("{") and "agentenv starting" in line]
    assert started and started[0]["task"] == "calculator-tool" and started[0]["concurrency"] == 256, env_log
    # The rollout pods' episodes went through it: a reset each (through the Service: the
    # agents know no other address), then steps until done. Read after step 1, so at least
    # one rollout batch (128 episodes) had been scored by it.
    stats = probe["stats"]
    assert stats["task"] == "calculator-tool", stats
    assert stats["started"] >= 128 and stats["finished"] >= 128, stats
    # A tool turn over the Service from a rollout pod: the tool's result, the episode open;
    # then the answer scored. Steps go to the replica the reset named: the env pod's IP.
    assert probe["tool"] == {"observation": "=408\n", "reward": 0.0, "done": False}, probe
    assert probe["answer"]["done"] is True and probe["answer"]["reward"] == 1.0, probe
    assert probe["owner"] in {f"http://{p['ip']}:8080" for p in env_pods.values()}, (probe, env_pods)

    # The job ran its steps, scored by the env.
    assert final["step"] >= AGENTIC_STEPS, final
    assert 0.0 <= float((final.get("reward") or {}).get("mean", "nan")) <= 1.0, final
