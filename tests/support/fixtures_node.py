"""`node_kube` (session): a second local control plane whose CPU pool is a real kubelet
node (e2e/cluster/node.py: containerd, runc, bridge CNI, kube-proxy, CoreDNS), with one
kwok GPU node beside it. Every image the node runs is built here by e2e/images (e2e/setup.sh
builds them; this fixture builds whatever is missing, a no-op otherwise) and imported into
the node's containerd. `node_kube.images` maps each image's name to its local reference.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from e2e.cluster import controlplane
from e2e.images.build import NODE_IMAGES, Catalog
from tests.support.fixtures_cluster import Kube

__all__ = ["node_kube", "real_node_plane"]


@contextmanager
def real_node_plane() -> Iterator[Kube]:
    """The plane with the real node, its images imported and the CRDs installed; stopped after.
    Inside a sandbox only (e2e/sandbox): the node changes the network namespace's settings."""
    bin_dir = controlplane.ensure_built()
    catalog = Catalog(bin_dir)
    refs = catalog.build_all(Path(sys.executable).parent)
    plane = controlplane.ControlPlane(bin=bin_dir, cpu_nodes=0, gpu_nodes=1, real_node=True)
    plane.start()
    try:
        # e2e/setup.sh loaded them already (e2e/images/load.py); a no-op then.
        plane.node.containerd.replace_images({refs[name]: catalog.layout(name) for name in NODE_IMAGES})
        k = Kube(plane.kubeconfig, plane.kubectl_path)
        k.install_crds()
        k.images = refs
        k.plane = plane
        yield k
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def node_kube():
    with real_node_plane() as k:
        yield k
