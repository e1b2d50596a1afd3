"""Security on the real control plane: credentials that reach pods only from Secrets and are
never shown, children the API server refuses, a finaliser that lets go, a sandbox policy.

A nats-server that requires a user and password plays the stack's NATS; the operator
authenticates to it with the job's own Secret, as the pods do.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import nats
import pytest

from kuberl.workloads.buffer.names import JobNames
from kuberl.workloads.config import NATS_CREDENTIALS_DIR_ENV, NATS_CREDENTIALS_MOUNT
from tests.cluster.test_operator import (
    condition,
    cpu_job,
    create,
    deployment,
    get,
    job_status,
    trainer_pods,
)
from tests.support.fixtures_cluster import Kube, wait_until
from tests.support.fixtures_servers import free_port, running_nats
from tests.support.operator_process import operator_process

pytestmark = pytest.mark.cluster

NATS_USER = {"user": "tenant-a", "password": "nats-pw-3f9c1e7d"}
S3_KEYS = {"AWS_ACCESS_KEY_ID": "AKIATENANTA0001", "AWS_SECRET_ACCESS_KEY": "s3-secret-8d2b6a4f"}
HF_TOKEN = "hf_tok_5e1a9c3b7d"
SECRET_VALUES = [*NATS_USER.values(), *S3_KEYS.values(), HF_TOKEN]


@pytest.fixture(autouse=True)
def _needs_fake_nodes(kube: Kube):
    if not getattr(kube, "kwok", getattr(kube, "local", False)):
        pytest.skip("needs kwok fake nodes (the local control plane)")


@pytest.fixture(scope="module")
def guarded_nats():
    yield from running_nats(signal.SIGKILL, auth=NATS_USER)


@pytest.fixture(scope="module")
def operator(kube: Kube):
    # The allowlist admits the loopback servers the tests run (and nothing else).
    with operator_process(kube, KUBERL_FINALIZER_RETRIES="2", KUBERL_ENDPOINT_ALLOWLIST="127.0.0.1") as proc:
        yield proc


def secret(kube: Kube, ns: str, name: str, data: dict[str, str]) -> None:
    kube.core.create_namespaced_secret(ns, {"metadata": {"name": name}, "stringData": data})


async def _authenticated_streams(url: str) -> list[str]:
    nc = await nats.connect(url, **NATS_USER)
    try:
        return [s.config.name for s in await nc.jetstream().streams_info()]
    finally:
        await nc.close()


def test_credentials_come_only_from_secrets_and_are_never_shown(kube, namespace, operator, guarded_nats):
    doc = cpu_job("tenant", guarded_nats.url, replicas=1)
    doc["spec"]["buffer"]["credentialsSecret"] = {"name": "nats-creds"}
    doc["spec"]["weightStore"]["credentialsSecret"] = {"name": "s3-creds"}
    doc["spec"]["trainer"]["env"] = [{"name": "HF_TOKEN",
                                      "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}]
    create(kube, namespace, doc)

    # Before the Secrets exist the job waits, naming each one and what it must hold.
    failed = wait_until("the missing Secrets named",
                        lambda: (c := condition(job_status(kube, namespace, "tenant"), "Failed"))
                        and c.get("reason") == "InvalidSpec" and c, timeout=60)
    assert "spec.buffer.credentialsSecret.name: Secret 'nats-creds' does not exist" in failed["message"]
    assert "spec.weightStore.credentialsSecret.name: Secret 's3-creds' does not exist" in failed["message"]
    assert "spec.trainer.env[0].valueFrom.secretKeyRef: Secret 'hf' does not exist" in failed["message"]
    assert not trainer_pods(kube, namespace, "tenant")

    secret(kube, namespace, "nats-creds", NATS_USER)
    secret(kube, namespace, "s3-creds", S3_KEYS)
    secret(kube, namespace, "hf", {"token": HF_TOKEN})
    # The operator authenticates with the job's Secret: the streams exist on the guarded server.
    wait_until("buffer ready", lambda: (c := condition(job_status(kube, namespace, "tenant"), "BufferReady"))
               and c["status"] == "True", timeout=90)
    names = JobNames.for_job(namespace, "tenant")
    assert set(names.streams()) <= set(asyncio.run(_authenticated_streams(guarded_nats.url)))

    pod = wait_until("trainer pod", lambda: trainer_pods(kube, namespace, "tenant"), timeout=60)[0]
    container = pod.spec.containers[0]
    env = {e.name: e for e in container.env}
    for key in S3_KEYS:
        assert env[key].value is None and env[key].value_from.secret_key_ref.name == "s3-creds"
        assert env[key].value_from.secret_key_ref.key == key
    assert env["HF_TOKEN"].value_from.secret_key_ref.name == "hf"
    assert env[NATS_CREDENTIALS_DIR_ENV].value == NATS_CREDENTIALS_MOUNT
    mounts = {m.mount_path: m.name for m in container.volume_mounts}
    volumes = {v.name: v for v in pod.spec.volumes}
    assert volumes[mounts[NATS_CREDENTIALS_MOUNT]].secret.secret_name == "nats-creds"
    agent = next(c for c in deployment(kube, namespace,
                                       "tenant-rollout").spec.template.spec.containers if c.name == "agent")
    assert {e.name for e in agent.env} >= {*S3_KEYS, NATS_CREDENTIALS_DIR_ENV}

    # Nothing secret in what anyone with read access to the job sees.
    shown = [
        json.dumps(kube.core.read_namespaced_config_map("tenant-config", namespace).data),
        json.dumps(get(kube, namespace, "rljobs", "tenant")),
        json.dumps([e.message for e in kube.core.list_namespaced_event(namespace).items]),
        Path(operator.log_path).read_text(),
        json.dumps(kube.api_client.sanitize_for_serialization(pod)),
    ]
    for value in SECRET_VALUES:
        assert not any(value in text for text in shown), (
            "a secret value appears in a ConfigMap, status, Event, log or pod spec"
        )


def test_a_child_the_api_server_refuses_is_a_condition_and_a_warning(kube, namespace, operator, guarded_nats):
    # A quota that admits no pods: the server refuses the trainer pod (403) and the
    # ReplicaSet's pods (ReplicaFailure) — what a restricted namespace does to a non-compliant pod.
    kube.core.create_namespaced_resource_quota(namespace,
                                               {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})
    secret(kube, namespace, "nats-creds", NATS_USER)
    doc = cpu_job("refused", guarded_nats.url, replicas=1)
    doc["spec"]["buffer"]["credentialsSecret"] = {"name": "nats-creds"}
    create(kube, namespace, doc)
    created = wait_until("Created False with the server's reason",
                         lambda: (c := condition(job_status(kube, namespace, "refused"), "Created"))
                         and c.get("reason") == "ChildRejected" and c, timeout=90)
    assert "trainer pod 0" in created["message"] and "quota" in created["message"]
    rollout = wait_until("RolloutReady names the refused pods",
                         lambda: (c := condition(job_status(kube, namespace, "refused"), "RolloutReady"))
                         and c.get("reason") == "PodsRejected" and c, timeout=90)
    assert "RolloutPool refused-rollout" in rollout["message"] and "quota" in rollout["message"]
    reasons = {(e.type, e.reason) for e in kube.core.list_namespaced_event(namespace).items}
    assert ("Warning", "ChildRejected") in reasons and ("Warning", "PodsRejected") in reasons
    # Lifting the quota lets the job start by itself.
    kube.core.delete_namespaced_resource_quota("no-pods", namespace)
    wait_until("trainer pod after the quota is lifted", lambda: trainer_pods(kube, namespace, "refused"), timeout=90)


def test_deleting_a_job_whose_buffer_is_gone_lets_go_with_a_warning(kube, namespace, operator):
    dead = f"nats://127.0.0.1:{free_port()}"
    create(kube, namespace, cpu_job("orphan", dead, replicas=1))
    wait_until("job seen", lambda: condition(job_status(kube, namespace, "orphan"), "BufferReady"), timeout=60)
    kube.kubectl("delete", "rljob", "orphan", "-n", namespace, "--wait=false")
    wait_until("the finaliser let go", lambda: get(kube, namespace, "rljobs", "orphan") is None, timeout=90)
    warnings = [e for e in kube.core.list_namespaced_event(namespace, field_selector="involvedObject.name=orphan").items
                if e.reason == "BufferCleanupAbandoned"]
    assert warnings and warnings[0].type == "Warning" and "nats stream rm" in warnings[0].message


def test_an_agentenv_may_not_switch_its_sandbox_off(kube, namespace, operator):
    create(kube, namespace, {"apiVersion": "kuberl.io/v1alpha1", "kind": "AgentEnv", "metadata": {"name": "open-env"},
                             "spec": {"sandbox": {"denyEgress": False}}})
    ready = wait_until("AgentEnv refused", lambda: (c := condition((get(kube, namespace, "agentenvs",
                                                                        "open-env") or {}).get("status") or {},
                                                                   "Ready"))
                       and c.get("reason") == "InvalidSpec" and c, timeout=60)
    assert "spec.sandbox.denyEgress" in ready["message"] and "security.allowSandboxOptOut" in ready["message"]
    assert deployment(kube, namespace, "open-env") is None


def test_a_buffer_outside_the_endpoint_allowlist_is_refused_before_the_operator_dials_it(kube, namespace, operator):
    create(kube, namespace, cpu_job("elsewhere", "nats://10.0.0.99:4222", replicas=1))
    failed = wait_until("refused by the allowlist",
                        lambda: (c := condition(job_status(kube, namespace, "elsewhere"), "Failed"))
                        and c.get("reason") == "InvalidSpec" and c, timeout=60)
    assert (
        "spec.buffer.url: host '10.0.0.99' is not among the endpoints this installation allows (127.0.0.1)"
        in failed["message"]
    )
    assert not trainer_pods(kube, namespace, "elsewhere")
    # Never dialled: no buffer condition, no connection attempt in the operator's log.
    assert not condition(job_status(kube, namespace, "elsewhere"), "BufferReady")
    assert "cannot connect to nats://10.0.0.99" not in Path(operator.log_path).read_text()
