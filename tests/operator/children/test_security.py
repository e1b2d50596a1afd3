"""The pods the operator builds are hardened (issue 18): the restricted Pod Security
Standard, a read-only root filesystem with writable emptyDirs where processes write,
default resources, credentials only from Secrets, the SGLang server on loopback, and an
AgentEnv reachable only from the job's rollout and trainer pods. Pure, no cluster."""

from __future__ import annotations

import copy
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from kuberl.operator.api import AgentEnv, RLJob, RolloutPool
from kuberl.operator.api.common import ResourceRequirements
from kuberl.operator.api.constants import ENGINE_PORT, LABEL_JOB, LABEL_ROLE
from kuberl.operator.children.agentenv import agent_env_deployment, agent_env_ingress_policy, inline_agent_envs
from kuberl.operator.children.common import NON_ROOT_UID, container_resources, quantity_value, shm_volume
from kuberl.operator.children.render import render
from kuberl.operator.children.rollout import credential_secrets, rollout_deployment, rollout_service
from kuberl.operator.children.trainer import trainer_pod
from kuberl.operator.schema.validation import validate
from kuberl.workloads.config import (
    NATS_CREDENTIALS_DIR_ENV,
    NATS_CREDENTIALS_MOUNT,
    S3_CREDENTIAL_KEYS,
    S3_OPTIONAL_CREDENTIAL_KEYS,
    WorkloadConfig,
)
from tests.support import kube_lint
from tests.support.label_selectors import selects
from tests.support.objects import EXAMPLES, NS, S, example, job, pool

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
NATS_SECRET, S3_SECRET = "nats-creds", "s3-creds"


def example_docs(path: Path) -> list[dict]:
    return [validate(d) for d in yaml.safe_load_all(path.read_text()) if d]


def with_credentials(docs: list[dict]) -> list[dict]:
    """The same manifests with both credentialsSecrets set on every RLJob. Set after
    validation: `render` parses with pydantic only, so this works whether or not the CRD's
    CEL rules still refuse credentialsSecret."""
    docs = copy.deepcopy(docs)
    for d in docs:
        if d["kind"] == "RLJob":
            d["spec"].setdefault("buffer", {})["credentialsSecret"] = {"name": NATS_SECRET}
            d["spec"].setdefault("weightStore", {})["credentialsSecret"] = {"name": S3_SECRET}
    return docs


def pod_specs(children: list[dict]) -> list[tuple[str, dict]]:
    """(name, pod spec) of every Pod and every Deployment's pod template."""
    return [(f"{c['kind']}/{c['metadata']['name']}", kube_lint.pod_spec_of(c)) for c in children
            if c["kind"] in ("Pod", "Deployment")]


def all_containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def credentialed_job(file: str = "tiny-cpu.yaml") -> RLJob:
    doc = example(file, "RLJob")
    doc["spec"]["buffer"]["credentialsSecret"] = {"name": NATS_SECRET}
    doc["spec"]["weightStore"]["credentialsSecret"] = {"name": S3_SECRET}
    return RLJob.model_validate(doc)


def sglang_cpu_pool() -> RolloutPool:
    doc = example("shared-rolloutpool.yaml", "RolloutPool")
    doc["spec"].update({"gpusPerReplica": 0,
                        "engine": {"type": "sglang", "tensorParallelSize": 1, "memFractionStatic": 0.1}})
    return RolloutPool.model_validate(doc)


def containers_of(deployment: dict) -> dict[str, dict]:
    spec = deployment["spec"]["template"]["spec"]
    return {c["name"]: c for c in all_containers(spec)}


# -- every example, through the operator's own render ----------------------------------------


def all_example_docs() -> list[dict]:
    # Together, as `kuberl render examples/*.yaml`: a job's poolRef names a pool of another file.
    return [d for path in EXAMPLE_FILES for d in example_docs(path)]


@pytest.mark.parametrize("credentials", [False, True], ids=["plain", "credentials"])
def test_every_example_pod_passes_the_kube_linter_checks(credentials):
    docs = all_example_docs()
    children = render(with_credentials(docs) if credentials else docs, S, namespace=NS, check=False)
    specs = pod_specs(children)
    kinds = {name.split("/")[0] for name, _ in specs}
    assert kinds == {"Pod", "Deployment"} and len(specs) >= len(EXAMPLE_FILES), [n for n, _ in specs]
    failures = {name: found for name, spec in specs if (found := kube_lint.lint({"kind": "Pod", "spec": spec}))}
    assert failures == {}
    for name, spec in specs:
        # Stricter than kube-linter's per-container checks: init containers too.
        for c in all_containers(spec):
            sc, res = c["securityContext"], c["resources"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
            assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"], (name, c["name"])
            assert quantity_value(res["requests"]["memory"]) <= quantity_value(res["limits"]["memory"]), (name,
                                                                                                          c["name"])
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False, name
    secret_refs = {e["valueFrom"]["secretKeyRef"]["name"] for _, spec in specs for c in all_containers(spec)
                   for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    assert (S3_SECRET in secret_refs) is credentials  # the variant really carries credentials


def test_the_lint_checks_fail_a_pod_that_is_not_hardened():
    # The checks above could pass vacuously; this pod breaks each of them.
    bare = {"kind": "Pod", "spec": {"containers": [
        {"name": "c", "image": "x", "envFrom": [{"secretRef": {"name": "s"}}],
         "env": [{"name": "DB_PASSWORD", "value": "hunter2"}]}]}}
    assert set(kube_lint.lint(bare)) == set(kube_lint.CHECKS)
    root = {"kind": "Pod", "spec": {"securityContext": {"runAsNonRoot": True},
                                    "containers": [{"name": "c", "securityContext": {"runAsUser": 0}}]}}
    assert kube_lint.run_as_non_root(root["spec"]) == ["container 'c' is set to runAsNonRoot, but runAsUser set to 0"]
    override = {"securityContext": {"runAsNonRoot": True},
                "initContainers": [{"name": "i", "securityContext": {"runAsNonRoot": False}}],
                "containers": [{"name": "c"}]}
    assert kube_lint.run_as_non_root(override) == ["container 'i' is not set to runAsNonRoot"]
    assert kube_lint.unset_cpu_requirements({"containers": [{"name": "c", "resources": {"requests": {"cpu": "0m"}}}]})


# -- the restricted Pod Security Standard ----------------------------------------------------


def test_trainer_and_rollout_pods_run_restricted_as_the_non_root_user():
    pods = {
        "trainer": trainer_pod(job(), NS, 0, 0, S)["spec"],
        "sglang": rollout_deployment(pool(), NS, S, bound_job="j", model_source="hf://Qwen/Qwen2.5-7B-Instruct")["spec"]["template"]["spec"],
        "sglang-cpu+init": rollout_deployment(sglang_cpu_pool(), NS, S, bound_job="tiny", model_source="builtin://tiny")["spec"]["template"]["spec"],
        "torch": rollout_deployment(RolloutPool.model_validate(
            {"metadata": {"name": "p", "namespace": NS}, "spec": {"engine": {"type": "torch"}, "gpusPerReplica": 0}}),
                                    NS, S)["spec"]["template"]["spec"],
    }
    assert pods["sglang-cpu+init"]["initContainers"]
    for what, spec in pods.items():
        assert spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}, "runAsNonRoot": True,
                                           "runAsUser": NON_ROOT_UID,
                                           "runAsGroup": NON_ROOT_UID, "fsGroup": NON_ROOT_UID}, what
        assert NON_ROOT_UID == 65532
        assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False, what
        for c in all_containers(spec):
            assert c["securityContext"] == {"allowPrivilegeEscalation": False, "privileged": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}, (what, c["name"])


def test_every_process_has_a_writable_tmp_and_home_and_the_trainer_its_output_dir():
    trainer = trainer_pod(job(), NS, 0, 0, S)["spec"]
    rollout = rollout_deployment(sglang_cpu_pool(), NS, S, bound_job="tiny", model_source="builtin://tiny")["spec"]["template"]["spec"]
    for spec in (trainer, rollout):
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in all_containers(spec):
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], c["name"]
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["HOME"] == "/tmp" and env["XDG_CACHE_HOME"].startswith("/tmp/"), c["name"]
            assert set(mounts.values()) <= set(volumes), c["name"]  # every mount has its volume
    [c] = trainer["containers"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    output = WorkloadConfig.model_fields["output_dir"].default
    assert output == "/var/run/kuberl" and "emptyDir" in {v["name"]: v for v in trainer["volumes"]}[mounts[output]]


def test_a_users_home_wins_and_is_not_duplicated():
    j = job(trainer={**job().spec.trainer.to_wire(), "env": [{"name": "HOME", "value": "/scratch"}]})
    env = trainer_pod(j, NS, 0, 0, S)["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "HOME"] == ["/scratch"]
    assert [e for e in env if e["name"] == "XDG_CACHE_HOME"]


def test_agent_env_keeps_its_sandbox_semantics():
    doc = example("agentenv-calculator.yaml", "AgentEnv")
    strict = agent_env_deployment(AgentEnv.model_validate(doc), NS, S)["spec"]["template"]["spec"]
    assert kube_lint.lint({"kind": "Pod", "spec": strict}) == {}
    assert strict["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    doc["spec"]["sandbox"].update({"runAsNonRoot": False, "readOnlyRootFilesystem": False})
    relaxed = agent_env_deployment(AgentEnv.model_validate(doc), NS, S)["spec"]["template"]["spec"]
    assert relaxed["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert relaxed["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False
    assert set(kube_lint.lint({"kind": "Pod", "spec": relaxed})) == {"run-as-non-root", "no-read-only-root-fs"}
    assert relaxed["automountServiceAccountToken"] is False  # not a sandbox option: always off


# -- resources ---------------------------------------------------------------------------------


def test_default_resources_per_role():
    gpu_trainer = trainer_pod(job(), NS, 0, 0, S)["spec"]["containers"][0]["resources"]  # 8 GPUs
    assert gpu_trainer == {"requests": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "8"},
                           "limits": {"memory": "256Gi", "nvidia.com/gpu": "8"}}
    cpu_trainer = trainer_pod(job("tiny-cpu.yaml"), NS, 0, 0, S)["spec"]["containers"][0]["resources"]
    assert cpu_trainer == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
    c = containers_of(rollout_deployment(pool(), NS, S, bound_job="j", model_source="hf://m"))  # 2 GPUs
    assert c["engine"]["resources"] == {"requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "2"},
                                        "limits": {"memory": "64Gi", "nvidia.com/gpu": "2"}}
    assert c["agent"]["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}
    init = containers_of(rollout_deployment(sglang_cpu_pool(), NS, S, bound_job="t", model_source="builtin://tiny"))["initial-model"]
    assert init["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    env = AgentEnv.model_validate({"metadata": {"name": "e", "namespace": NS}, "spec": {}})
    assert agent_env_deployment(env, NS, S)["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    # The example's own requests stay; only the limit is added.
    calc = agent_env_deployment(AgentEnv.model_validate(example("agentenv-calculator.yaml", "AgentEnv")), NS, S)
    assert calc["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}


@pytest.mark.parametrize(("given", "expected"), [
    # A value the user gave wins, key by key.
    ({"requests": {"cpu": "3"}}, {"requests": {"cpu": "3", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}),
    ({"limits": {"memory": "12Gi", "cpu": "2"}},
     {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "12Gi", "cpu": "2"}}),
    # A default never contradicts what was given (request <= limit, or the API server refuses the pod).
    ({"requests": {"memory": "20Gi"}}, {"requests": {"memory": "20Gi", "cpu": "1"}, "limits": {"memory": "20Gi"}}),
    ({"limits": {"memory": "1Gi", "cpu": "250m"}},
     {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "1Gi", "cpu": "250m"}}),
    ({"requests": {"memory": "100M"}, "limits": {"memory": "200M"}},
     {"requests": {"memory": "100M", "cpu": "1"}, "limits": {"memory": "200M"}}),
])
def test_user_resources_win_and_defaults_fill_the_rest(given, expected):
    assert container_resources(ResourceRequirements.model_validate(given), 0, "trainer") == expected


def test_shared_memory_is_bounded_by_half_the_memory_limit():
    assert shm_volume({"limits": {"memory": "256Gi"}})["emptyDir"] == {"medium": "Memory", "sizeLimit": "128Gi"}
    assert shm_volume({"limits": {"memory": "1000Mi"}})["emptyDir"]["sizeLimit"] == "500Mi"
    assert shm_volume({"limits": {"memory": "not-a-quantity"}})["emptyDir"]["sizeLimit"] == "1Gi"
    trainer = trainer_pod(job("tiny-cpu.yaml"), NS, 0, 0, S)["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}} in trainer["volumes"]  # 8Gi limit
    j = job(trainer={**job().spec.trainer.to_wire(), "resources": {"limits": {"memory": "100Gi"}}})
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "50Gi"}} in trainer_pod(j, NS, 0, 0,
                                                                                                  S)["spec"]["volumes"]
    engine_pod = rollout_deployment(pool(), NS, S, bound_job="j")["spec"]["template"]["spec"]
    assert {"name": "dshm",
            "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}} in engine_pod["volumes"]  # 64Gi limit


# -- credentials ------------------------------------------------------------------------------


def _assert_credentials(container: dict, volumes: dict[str, dict]) -> None:
    env = {e["name"]: e for e in container["env"]}
    assert env[NATS_CREDENTIALS_DIR_ENV] == {"name": NATS_CREDENTIALS_DIR_ENV, "value": NATS_CREDENTIALS_MOUNT}
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == NATS_CREDENTIALS_MOUNT]
    assert mount["readOnly"] is True
    assert volumes[mount["name"]] == {"name": mount["name"],
                                      "secret": {"secretName": NATS_SECRET, "defaultMode": 0o440}}
    for key in S3_CREDENTIAL_KEYS:
        assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": S3_SECRET, "key": key}}}
    for key in S3_OPTIONAL_CREDENTIAL_KEYS:
        assert env[key] == {"name": key,
                            "valueFrom": {"secretKeyRef": {"name": S3_SECRET, "key": key, "optional": True}}}


def _has_no_credentials(container: dict) -> bool:
    names = {e["name"] for e in container.get("env", [])}
    return not names & {NATS_CREDENTIALS_DIR_ENV, *S3_CREDENTIAL_KEYS, *S3_OPTIONAL_CREDENTIAL_KEYS} and \
        NATS_CREDENTIALS_MOUNT not in {m["mountPath"] for m in container.get("volumeMounts", [])}


def test_credentials_reach_the_trainer_and_the_rollout_agent_from_their_secrets():
    j = credentialed_job()
    pod = trainer_pod(j, NS, 0, 0, S)["spec"]
    _assert_credentials(pod["containers"][0], {v["name"]: v for v in pod["volumes"]})
    # Through render: the job's inline pool gets the job's Secrets (credential_secrets).
    [deployment] = [c for c in render([d for d in with_credentials(example_docs(EXAMPLES / "tiny-cpu.yaml"))], S, NS)
                    if c["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    _assert_credentials(containers_of(deployment)["agent"], {v["name"]: v for v in spec["volumes"]})


def test_the_engine_and_the_init_container_get_no_credentials():
    secrets = credential_secrets(credentialed_job().spec.to_wire())
    d = rollout_deployment(sglang_cpu_pool(), NS, S, bound_job="tiny", model_source="builtin://tiny", **secrets)
    c = containers_of(d)
    _assert_credentials(c["agent"], {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]})
    assert _has_no_credentials(c["engine"]) and _has_no_credentials(c["initial-model"])


def test_without_credentials_secrets_nothing_is_mounted_or_set():
    pod = trainer_pod(job("tiny-cpu.yaml"), NS, 0, 0, S)["spec"]
    assert _has_no_credentials(pod["containers"][0]) and not [v for v in pod["volumes"] if "secret" in v]
    d = rollout_deployment(pool(), NS, S, bound_job="j", **credential_secrets(job("tiny-cpu.yaml").spec.to_wire()))
    assert all(_has_no_credentials(c) for c in containers_of(d).values())


def test_credential_secrets_reads_the_jobs_wire_spec():
    assert credential_secrets(None) == {"buffer_credentials_secret": None, "weight_store_credentials_secret": None,
                                        "weight_store_endpoint": None}
    assert credential_secrets({"buffer": {"credentialsSecret": {"name": "n"}},
                               "weightStore": {"endpoint": "http://s3"}}) == {
        "buffer_credentials_secret": "n", "weight_store_credentials_secret": None, "weight_store_endpoint": "http://s3"}
    found = credential_secrets(credentialed_job().spec.to_wire())
    assert (found["buffer_credentials_secret"], found["weight_store_credentials_secret"]) == (NATS_SECRET, S3_SECRET)


# -- the SGLang server on loopback -----------------------------------------------------------


def test_the_engine_listens_on_loopback_and_is_not_published():
    d = rollout_deployment(pool(), NS, S, bound_job="j", model_source="hf://m")
    engine = containers_of(d)["engine"]
    args = engine["args"]
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert "ports" not in engine
    assert not [k for k in ("startupProbe", "readinessProbe",
                            "livenessProbe") if "httpGet" in engine[k] or "tcpSocket" in engine[k]]
    ports = rollout_service(pool(), NS, S)["spec"]["ports"]
    assert [p["name"] for p in ports] == ["metrics"] and ENGINE_PORT not in {p["port"] for p in ports}


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_loopback_probe_passes_on_200_and_fails_on_an_error_or_no_server():
    engine = containers_of(rollout_deployment(pool(), NS, S, bound_job="j"))["engine"]
    probe = engine["livenessProbe"]["exec"]["command"]
    assert probe[0] == "python3" and probe[3] == f"http://127.0.0.1:{ENGINE_PORT}/health"
    assert float(probe[4]) < engine["livenessProbe"]["timeoutSeconds"]  # fails before the kubelet kills it
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"

    def run(path: str) -> int:
        # The probe's own script, run by this interpreter (the image's python3 is the same language).
        return subprocess.run([sys.executable, "-c", probe[2], base + path, probe[4]], capture_output=True,
                              timeout=30).returncode

    try:
        assert run("/health") == 0
        assert run("/health_generate") != 0  # 503: not ready
    finally:
        server.shutdown()
        server.server_close()
    assert run("/health") != 0  # nothing listening


# -- AgentEnv pods: their address and who may reach them -------------------------------------


def test_env_pods_know_their_own_ip():
    env = AgentEnv.model_validate(example("agentenv-calculator.yaml", "AgentEnv"))
    [c] = agent_env_deployment(env, NS, S)["spec"]["template"]["spec"]["containers"]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in c["env"]


def _rendered_pod_labels(children: list[dict]) -> dict[str, dict[str, str]]:
    out = {}
    for c in children:
        if c["kind"] == "Pod":
            out[c["metadata"]["name"]] = c["metadata"]["labels"]
        elif c["kind"] == "Deployment":
            out[c["metadata"]["name"]] = c["spec"]["template"]["metadata"]["labels"]
    return out


def test_an_inline_env_admits_only_its_jobs_rollout_and_trainer_pods():
    docs = example_docs(EXAMPLES / "decoupled-agentic.yaml") + example_docs(EXAMPLES / "shared-rolloutpool.yaml")
    children = render(docs, S, NS)
    [policy] = [c for c in children if c["kind"] == "NetworkPolicy" and c["metadata"]["name"] == "calculator-ingress"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"] and spec["podSelector"] == {
        "matchLabels": {LABEL_ROLE: "agentenv", "kuberl.io/agent-env": "calculator"}
    }
    [rule] = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    [peer] = rule["from"]
    assert set(peer) == {"podSelector"}  # no namespaceSelector: this namespace only
    labels = _rendered_pod_labels(children)
    assert selects(peer["podSelector"], labels["agentic-tools-trainer-0"])
    assert selects(peer["podSelector"], labels["shared-sglang"])  # the pool bound to the job
    assert not selects(peer["podSelector"], labels["calculator"])  # not the env's own pods
    other_job = {**labels["agentic-tools-trainer-0"], LABEL_JOB: "someone-else"}
    assert not selects(peer["podSelector"], other_job)
    assert selects(spec["podSelector"], labels["calculator"])


def test_a_standalone_env_admits_kuberl_rollout_and_trainer_pods_of_its_namespace():
    env = AgentEnv.model_validate(example("agentenv-calculator.yaml", "AgentEnv"))
    assert LABEL_JOB not in (env.metadata.get("labels") or {})
    [peer] = agent_env_ingress_policy(env, NS, S)["spec"]["ingress"][0]["from"]
    labels = _rendered_pod_labels(render(example_docs(EXAMPLES / "tiny-cpu.yaml"), S, NS))
    assert selects(peer["podSelector"], labels["tiny-arithmetic-trainer-0"])
    assert selects(peer["podSelector"], labels["tiny-arithmetic-rollout"])
    assert not selects(peer["podSelector"], {LABEL_ROLE: "rollout"})  # not kuberl's
    assert not selects(peer["podSelector"], {**labels["tiny-arithmetic-trainer-0"], LABEL_ROLE: "agentenv"})


def test_an_inline_env_carries_the_job_label_its_policy_reads():
    j = job("decoupled-agentic.yaml")
    [doc] = inline_agent_envs(j, NS, S)
    env = AgentEnv.model_validate(doc)
    peer = agent_env_ingress_policy(env, NS, S)["spec"]["ingress"][0]["from"][0]["podSelector"]
    assert peer["matchLabels"] == {LABEL_JOB: "agentic-tools"}
