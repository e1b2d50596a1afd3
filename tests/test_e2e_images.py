"""The image builder's decisions, without building: what keys an image (so a change
rebuilds it and nothing else does), what the deps base installs, and that a written OCI
layout is what containerd and buildah read (digests that match the bytes, the name under
both annotations). The images themselves are built and run by e2e/test_real_node.py."""

from __future__ import annotations

import hashlib
import json
import tomllib

from e2e.images import dockerfiles, oci, rootfs
from tests.support.fixtures_cluster import REPO


def _fake_repo(tmp_path):
    for rel in ("pyproject.toml", "README.md", "operator/kuberl/a.py", "workloads/kuberl/b.py", "tests/t.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    (tmp_path / "Dockerfile").write_text("FROM x:1\n")
    return tmp_path


def test_an_image_key_follows_what_its_dockerfile_copies_and_nothing_else(tmp_path):
    repo = _fake_repo(tmp_path)
    key = lambda: dockerfiles.context_key(repo, repo / "Dockerfile")  # noqa: E731
    first = key()
    (repo / "tests/t.py").write_text("changed")              # not in the build context
    (repo / "operator/kuberl/__pycache__").mkdir()
    (repo / "operator/kuberl/__pycache__/a.cpython-311.pyc").write_text("bytecode")
    assert key() == first
    (repo / "workloads/kuberl/b.py").write_text("changed")   # copied into the image
    second = key()
    assert second != first
    (repo / "Dockerfile").write_text("FROM x:2\n")
    assert key() != second


def test_the_deps_base_holds_every_third_party_package_the_workload_image_installs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = rootfs.workload_requirements(REPO / "pyproject.toml")
    for r in [*project["dependencies"], *project["optional-dependencies"]["trainer"],
              *project["optional-dependencies"]["rollout"]]:
        assert r in reqs
    assert any(r.startswith("torch==") for r in reqs) and any(r.startswith("setuptools") for r in reqs)
    assert not any(r.startswith("kuberl") for r in reqs)  # the project itself comes from the Dockerfile


def test_an_oci_layout_names_the_image_for_containerd_and_buildah_and_its_digests_hold(tmp_path):
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    layer = oci.tar_tree(tree, tmp_path / "layer.tar")
    again = oci.tar_tree(tree, tmp_path / "again.tar")
    assert layer.read_bytes() == again.read_bytes(), "the same tree must give the same layer digest"
    digest = oci.write_layout(tmp_path / "layout", "kuberl.local/hello:1", [layer], entrypoint=["/bin/hello"])
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    [desc] = index["manifests"]
    assert desc["digest"] == digest
    assert desc["annotations"] == {"io.containerd.image.name": "kuberl.local/hello:1",
                                   "org.opencontainers.image.ref.name": "kuberl.local/hello:1"}
    blob = lambda d: (tmp_path / "layout" / "blobs" / "sha256" / d["digest"].split(":")[1]).read_bytes()  # noqa: E731
    for d in [desc, *json.loads(blob(desc))["layers"], json.loads(blob(desc))["config"]]:
        data = blob(d)
        assert "sha256:" + hashlib.sha256(data).hexdigest() == d["digest"] and len(data) == d["size"]
    config = json.loads(blob(json.loads(blob(desc))["config"]))
    assert config["config"]["Entrypoint"] == ["/bin/hello"]
    assert config["rootfs"]["diff_ids"] == [d["digest"] for d in json.loads(blob(desc))["layers"]]


def test_only_the_build_machinerys_known_transient_is_retried():
    """runc's memfd sealing race (seen on this machine) gets a second build; a failing RUN
    step of a Dockerfile does not."""
    assert dockerfiles.is_transient('Close_Fd sealing memfd copy: Device or resource '
                                    'busy\nError: building at STEP "RUN ..."')
    assert not dockerfiles.is_transient("ERROR: No matching distribution found for torch==9.9\nError: building at STEP")
