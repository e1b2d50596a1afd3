"""What the controllers create is what `kuberl render` prints: one reconcile round per
object of every example, run in-process against a recording cluster, writes the very
children `children.render` composes (both come from `children.desired`).

The only differences allowed are the ones the API server's bookkeeping adds on the way:
owner references (kopf.adopt) and the operator's manifest digests."""

from __future__ import annotations

import base64
import copy
from pathlib import Path

import kopf
import pytest
import yaml

from kuberl.operator.api import RLJob
from kuberl.operator.api.constants import MANIFEST_HASH_ANNOTATION, SPEC_HASH_ANNOTATION
from kuberl.operator.children.render import RenderError, render
from kuberl.operator.controllers import agentenv as env_controller
from kuberl.operator.controllers import rljob as job_controller
from kuberl.operator.controllers import rolloutpool as pool_controller
from kuberl.operator.controllers.runtime import RT
from kuberl.operator.decisions.access import S3_CREDENTIAL_KEYS, secret_needs
from kuberl.operator.schema.validation import validate
from tests.support.recording_cluster import QuietBuffer, RecordingCluster, is_custom

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
NS = "team-a"

# Examples that name one another are applied together, as their comments say.
GROUPS = [
    ("tiny-cpu.yaml",),
    ("tiny-cpu-colocated.yaml",),
    ("colocated-math.yaml",),
    ("decoupled-agentic.yaml", "shared-rolloutpool.yaml"),
    ("shared-rolloutpool.yaml",),
    ("agentenv-calculator.yaml",),
    ("tiny-megatron-sglang.yaml",),
    ("tiny-megatron-sglang-colocated.yaml",),
]


@pytest.fixture
def cluster(monkeypatch) -> RecordingCluster:
    recording = RecordingCluster()
    monkeypatch.setattr(RT, "_kube", recording)
    monkeypatch.setattr(RT, "_nats", QuietBuffer())
    monkeypatch.setattr(RT, "watched", recording)
    monkeypatch.setattr(RT, "streams_ready", set())
    monkeypatch.setattr(RT, "current_version", {})
    monkeypatch.setattr(kopf, "event", recording.event)
    return recording


def applied(cluster: RecordingCluster, files: tuple[str, ...]) -> list[dict]:
    """The examples' custom objects as the API server stores them (defaulted, with uids),
    and the Secrets they name (so the jobs are valid and create their children)."""
    stored = []
    for file in files:
        for doc in yaml.safe_load_all((EXAMPLES / file).read_text()):
            if doc and is_custom(doc):
                doc = validate(doc)
                doc["metadata"]["namespace"] = NS
                stored.append(cluster.put(doc))
    for doc in stored:
        if doc["kind"] == "RLJob":
            for need in secret_needs(RLJob.model_validate(doc)):
                keys = {*need.keys, *(("token",) if need.nats else ()), *S3_CREDENTIAL_KEYS}
                cluster.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": need.name, "namespace": NS},
                             "data": {k: base64.b64encode(b"x").decode() for k in keys}})
    return stored


def one_round_each(cluster: RecordingCluster, stored: list[dict]) -> None:
    """A create round per job, then per pool and env (those the jobs created included), as
    the operator's create handlers run them."""
    for doc in stored:
        if doc["kind"] == "RLJob":
            job_controller.reconcile_job(cluster.get("", "RLJob", NS, doc["metadata"]["name"]), "create")
    for pool in cluster.all("", "RolloutPool"):
        pool_controller.reconcile_pool(pool, "create")
    for env in cluster.all("", "AgentEnv"):
        env_controller.reconcile_env(env, "create")


def comparable(obj: dict) -> dict:
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    meta.pop("ownerReferences", None)
    annotations = {k: v for k, v in (meta.pop("annotations", None) or {}).items()
                   if k not in (MANIFEST_HASH_ANNOTATION, SPEC_HASH_ANNOTATION)}
    if annotations:
        meta["annotations"] = annotations
    return obj


def keyed(objs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): comparable(o) for o in objs}


def test_every_example_is_in_a_group():
    assert {f.name for f in EXAMPLES.glob("*.yaml")} == {f for group in GROUPS for f in group}


# The examples written for `kuberl run` on one CPU machine: the operator refuses them on a
# cluster (SGLang needs GPU pods there), and `kuberl render` says so with the same words.
REFUSED = {("tiny-megatron-sglang.yaml",), ("tiny-megatron-sglang-colocated.yaml",)}


@pytest.mark.parametrize("files", GROUPS, ids=lambda g: "+".join(g))
def test_what_the_controllers_create_is_what_render_prints(cluster, files):
    stored = applied(cluster, files)
    one_round_each(cluster, stored)
    created = keyed(cluster.created())
    if files in REFUSED:
        with pytest.raises(RenderError) as refused:
            render(stored, RT.settings, namespace=NS)
        assert created == {}
        [job] = [cluster.get("", "RLJob", NS, d["metadata"]["name"]) for d in stored if d["kind"] == "RLJob"]
        failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "InvalidSpec" and failed["message"] in str(refused.value)
        return
    printed = keyed(render(stored, RT.settings, namespace=NS))
    assert created.keys() == printed.keys()
    for key, obj in printed.items():
        assert created[key] == obj, f"{key}: the controller created something other than render prints"
    assert any(kind in ("Pod", "Deployment") for kind, _ in created)  # the rounds did create workloads


@pytest.mark.parametrize("files", [("tiny-cpu.yaml",), ("decoupled-agentic.yaml", "shared-rolloutpool.yaml")],
                         ids=lambda g: "+".join(g))
def test_a_second_round_writes_nothing_and_events_follow_the_status_write(cluster, files):
    stored = applied(cluster, files)
    one_round_each(cluster, stored)
    jobs = [d["metadata"]["name"] for d in stored if d["kind"] == "RLJob"]
    for name in jobs:
        writes = [w for w in cluster.log if w.kind == "RLJob" and w.name == name]
        status_write = next(i for i, w in enumerate(writes) if w.verb == "patch" and w.subresource == "status")
        events = [i for i, w in enumerate(writes) if w.verb == "event"]
        assert events, "a new job's round posts Events (Created, …)"
        assert min(events) > status_write, "Events are posted after the round's status write"
    before = len(cluster.log)
    for name in jobs:
        job_controller.reconcile_job(cluster.get("", "RLJob", NS, name), "timer")
    assert [w for w in cluster.log[before:] if w.verb != "event"] == []
