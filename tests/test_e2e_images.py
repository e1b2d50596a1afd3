"""The image builder's decisions, without building: what keys an image (so a change
rebuilds it and nothing else does), what the deps base installs, and that a written OCI
layout is what containerd and buildah read (digests that match the bytes, the name under
both annotations). The images themselves are built and run by e2e/test_real_node.py."""

from __future__ import annotations

import gzip
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


def _blob(layout, digest):
    return layout / "blobs" / "sha256" / digest.split(":")[1]


def test_a_pushed_layout_reuses_its_bases_plain_layers_and_drops_its_gzip_copies(tmp_path):
    """What buildah pushed (every layer gzipped) is rewritten so a layer whose diff ID is a
    base's plain layer is that blob, hard-linked; the image's own new layer stays as pushed."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "deps").write_text("the dependency layer\n" * 1000)
    base = tmp_path / "base"
    oci.write_layout(base, "kuberl.local/deps:1", [oci.tar_tree(tree, tmp_path / "deps.tar")])
    [base_layer] = json.loads(_blob(base, json.loads((base / "index.json").read_text())["manifests"][0]["digest"])
                              .read_text())["layers"]
    # The pushed image: the base's layer and a new one, both gzipped (as buildah 1.28 writes them).
    pushed = tmp_path / "pushed"
    (tree / "deps").unlink()
    (tree / "app").write_text("the project\n")
    new_tar = oci.tar_tree(tree, tmp_path / "app.tar")
    new_diff_id = "sha256:" + hashlib.sha256(new_tar.read_bytes()).hexdigest()
    oci.write_layout(pushed, "kuberl.local/app:1", [oci.tar_tree(tmp_path / "tree", tmp_path / "x.tar")])
    blobs = pushed / "blobs" / "sha256"

    def put(data: bytes, media_type: str) -> dict:
        (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)
        return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}

    layers = [put(gzip.compress(data, mtime=0), oci.LAYER + "+gzip")
              for data in (_blob(base, base_layer["digest"]).read_bytes(), new_tar.read_bytes())]
    config = put(json.dumps({"rootfs": {"type": "layers", "diff_ids": [base_layer["digest"], new_diff_id]}}).encode(),
                 oci.CONFIG)
    manifest = put(json.dumps({"schemaVersion": 2, "mediaType": oci.MANIFEST, "layers": layers, "config": config})
                   .encode(), oci.MANIFEST)
    index = json.loads((pushed / "index.json").read_text())
    index["manifests"][0] |= {"digest": manifest["digest"], "size": manifest["size"]}
    (pushed / "index.json").write_text(json.dumps(index))

    assert oci.reuse_base_layers(pushed, [base]) == 1
    index = json.loads((pushed / "index.json").read_text())
    [desc] = index["manifests"]
    assert desc["annotations"]["io.containerd.image.name"] == "kuberl.local/app:1"
    data = _blob(pushed, desc["digest"]).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == desc["digest"] and len(data) == desc["size"]
    first, second = json.loads(data)["layers"]
    assert first == {"mediaType": oci.LAYER, "digest": base_layer["digest"], "size": base_layer["size"]}
    assert _blob(pushed, first["digest"]).stat().st_ino == _blob(base, base_layer["digest"]).stat().st_ino
    assert second == layers[1]  # the image's own layer, as pushed
    assert not _blob(pushed, layers[0]["digest"]).exists(), "the gzip copy of the base layer is dropped"
    assert oci.reuse_base_layers(pushed, [base]) == 0  # a second pass changes nothing


def test_only_the_build_machinerys_known_transient_is_retried():
    """runc's memfd sealing race (seen on this machine) gets a second build; a failing RUN
    step of a Dockerfile does not."""
    assert dockerfiles.is_transient('Close_Fd sealing memfd copy: Device or resource '
                                    'busy\nError: building at STEP "RUN ..."')
    assert not dockerfiles.is_transient("ERROR: No matching distribution found for torch==9.9\nError: building at STEP")


def test_libmounts_runtime_dir_is_removed_only_when_the_wrapped_step_created_it(tmp_path):
    run_dir = tmp_path / "mount"
    with rootfs.leaves_no_libmount_dir(run_dir):  # as debootstrap's mount of /proc does on a fresh machine
        run_dir.mkdir()
        (run_dir / "utab").write_text("")
    assert not run_dir.exists()
    run_dir.mkdir()
    with rootfs.leaves_no_libmount_dir(run_dir):  # a machine that had it keeps it
        (run_dir / "utab").write_text("")
    assert (run_dir / "utab").exists()
