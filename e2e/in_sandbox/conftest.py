"""Fixtures of the real-node suite (runs only inside a sandbox; see e2e/test_real_node.py).

`node_kube` (the plane with the real node) comes from the repository's root conftest;
`release` installs the chart with the laptop stack on it once per session, for every
module here. Plain helpers live in node_support.py.
"""

from __future__ import annotations

import pytest

from e2e.in_sandbox.node_support import install_release
from tests.support.fixtures_cluster import Kube


def pytest_collection_modifyitems(session, config, items):
    # Tests that start a plane of their own (no node_kube) run first: the session's
    # node_kube, once up, holds the node's bridge until the session ends. Then
    # test_real_node.py (the node, the chart, the tiny job), then the other modules. A
    # stable sort: the order within each group is pytest's.
    items.sort(key=lambda item: ("node_kube" in getattr(item, "fixturenames", ()),
                                 item.path.name != "test_real_node.py"))


@pytest.fixture(scope="session")
def release(node_kube: Kube) -> Kube:
    return install_release(node_kube)
