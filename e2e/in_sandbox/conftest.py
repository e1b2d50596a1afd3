"""Fixtures of the real-node suite (runs only inside a sandbox; see e2e/test_real_node.py).

`node_kube` (the plane with the real node) comes from the repository's root conftest;
`release` installs the chart with the laptop stack on it once per session, for every
module here. Plain helpers live in node_support.py.
"""

from __future__ import annotations

import pytest

from e2e.in_sandbox.node_support import CHART, NODE_VALUES, RELEASE, RELEASE_NS, _helm, _ns, _split
from tests.support.fixtures_cluster import Kube


def pytest_collection_modifyitems(session, config, items):
    # Tests that start a plane of their own (no node_kube) run first: the session's
    # node_kube, once up, holds the node's bridge until the session ends. Then
    # test_real_node.py (the node, the chart, the tiny job), then the other modules. A
    # stable sort: the order within each group is pytest's.
    items.sort(key=lambda item: ("node_kube" in getattr(item, "fixturenames", ()), item.path.name != "test_real_node.py"))


@pytest.fixture(scope="session")
def release(node_kube: Kube) -> Kube:
    images = node_kube.images
    sets = {"image.repository": _split(images["operator"])[0], "image.tag": _split(images["operator"])[1],
            "workloads.image": images["workload-cpu"],
            "stack.nats.image.repository": _split(images["nats"])[0], "stack.nats.image.tag": _split(images["nats"])[1],
            "stack.s3.image.repository": _split(images["seaweedfs"])[0], "stack.s3.image.tag": _split(images["seaweedfs"])[1]}
    _ns(node_kube, RELEASE_NS)
    _helm(node_kube, "upgrade", "--install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "-f", str(NODE_VALUES),
          *[f"--set={k}={v}" for k, v in sets.items()], "--wait", "--timeout", "5m")
    return node_kube
