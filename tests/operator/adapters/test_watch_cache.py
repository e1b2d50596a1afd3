"""The watch cache answers from kopf's indices: by name, by selector label, slimmed, strict about what is watched."""

from __future__ import annotations

import pytest

from kuberl.operator.adapters.watch_cache import INDEX_IDS, WatchCache, index_keys, slim
from kuberl.operator.api.constants import API_VERSION, LABEL_JOB, LABEL_POOL, LABEL_ROLE


def pod(name: str, labels: dict[str, str], phase: str = "Running") -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "labels": labels, "resourceVersion": "7",
                         "managedFields": [{"manager": "kubelet"}]},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True"}], "podIP": "10.0.0.1"}}


def indexed(objects: list[tuple[str, dict]]) -> dict[str, dict[tuple, list[dict]]]:
    """What kopf builds from the index functions: index id -> key -> values of every object."""
    indices: dict[str, dict[tuple, list[dict]]] = {index_id: {} for index_id in INDEX_IDS.values()}
    for kind, body in objects:
        index_id = next(i for (_, k), i in INDEX_IDS.items() if k == kind)
        for key, value in index_keys(kind, body).items():
            indices[index_id].setdefault(key, []).append(value)
    return indices


def test_pods_are_found_by_name_and_by_each_selector_label():
    trainer = pod("j-trainer-0", {LABEL_JOB: "j", LABEL_ROLE: "trainer"})
    engine = pod("p-abc", {LABEL_POOL: "j-rollout", LABEL_ROLE: "rollout", LABEL_JOB: "j"})
    cache = WatchCache()
    cache.bind(indexed([("Pod", trainer), ("Pod", engine)]))
    assert cache.get("v1", "Pod", "ns", "j-trainer-0")["metadata"]["uid"] == "u-j-trainer-0"
    assert [p["metadata"]["name"] for p in cache.list("v1", "Pod", "ns",
                                                      {LABEL_JOB: "j", LABEL_ROLE: "trainer"})] == ["j-trainer-0"]
    assert [p["metadata"]["name"] for p in cache.list("v1", "Pod", "ns",
                                                      {LABEL_ROLE: "rollout", LABEL_POOL: "j-rollout"})] == ["p-abc"]
    assert cache.list("v1", "Pod", "other", {LABEL_JOB: "j"}) == []
    assert cache.get("v1", "Pod", "ns", "gone") is None


def test_pods_and_deployments_are_slimmed_custom_objects_kept_whole():
    kept = slim("Pod", pod("a", {LABEL_JOB: "j"}))
    assert kept["status"] == {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    assert "spec" not in kept and "managedFields" not in kept["metadata"] and kept["metadata"]["resourceVersion"] == "7"
    deployment = {"metadata": {"name": "d", "annotations": {"h": "1"}},
                  "spec": {"replicas": 3, "template": {"spec": {}}},
                  "status": {"readyReplicas": 2}}
    assert slim("Deployment", deployment) == {"metadata": {"name": "d", "annotations": {"h": "1"}},
                                              "spec": {"replicas": 3},
                                              "status": {"readyReplicas": 2}}
    job = {"metadata": {"name": "j"}, "spec": {"trainer": {"replicas": 2}}, "status": {"phase": "Running"}}
    assert slim("RLJob", job) == job


def test_reads_of_unwatched_kinds_or_selectors_and_before_binding_fail_loudly():
    cache = WatchCache()
    with pytest.raises(RuntimeError, match="not bound"):
        cache.get(API_VERSION, "RLJob", "ns", "j")
    cache.bind(indexed([]))
    assert cache.get(API_VERSION, "RLJob", "ns", "j") is None
    with pytest.raises(KeyError, match="not watched"):
        cache.get("v1", "Secret", "ns", "s")
    with pytest.raises(KeyError, match="indexed labels"):
        cache.list("v1", "Pod", "ns", {LABEL_ROLE: "trainer"})
