"""Weight-manifest file names stay inside the fetch directory (real SeaweedFS S3)."""

from __future__ import annotations

import hashlib
import json

import pytest
from botocore.exceptions import ClientError

from kuberl.workloads.weights.names import unsafe_name_reason
from kuberl.workloads.weights.manifest import MANIFEST, UnsafeFileNameError
from kuberl.workloads.weights.store import WeightStore
from tests.workloads.weights.test_weights import write_checkpoint

BAD_NAMES = ["../evil", "/tmp/kuberl-abs-evil", "..\\evil", "sub//evil", "sub/evil", "..", ".", "", "manifest.json",
             "a\x00b"]
GOOD_NAMES = ["model.safetensors", "model-00001-of-00004.safetensors", "config.json", ".gitattributes",
              "tokenizer..json"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_names_are_refused(name):
    assert unsafe_name_reason(name) is not None


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_flat_names_are_allowed(name):
    assert unsafe_name_reason(name) is None



@pytest.fixture
def store(s3_server, s3_bucket):
    return WeightStore(s3_server.client(), s3_bucket, "team-a/job-1/weights")


def _forge(store: WeightStore, version: int, name: str, body: bytes = b"pwned\n") -> None:
    """What someone with write access to the prefix does: add a file under ``name`` to a
    published version's manifest (with the right size and digest) and upload it too where S3
    takes the key, so only the name check stands between the fetch and a write outside its
    directory. (SeaweedFS refuses keys with ``..`` segments; other S3 servers store them.)"""
    key = store._key(version, MANIFEST)
    manifest = json.loads(store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read())
    manifest["files"].insert(0, {"name": name, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()})
    try:
        store.client.put_object(Bucket=store.bucket, Key=store._key(version, name), Body=body)
    except ClientError:
        pass
    store.client.put_object(Bucket=store.bucket, Key=key, Body=json.dumps(manifest).encode())


def _files_under(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.servers
@pytest.mark.parametrize("name", ["../evil", "../../evil", "/tmp/kuberl-abs-evil", "..\\evil", "sub//evil"])
def test_a_manifest_naming_a_path_outside_the_version_is_refused_before_any_download(store, tmp_path, name):
    write_checkpoint(tmp_path / "src")
    store.publish(3, tmp_path / "src")
    _forge(store, 3, name)
    before = _files_under(tmp_path)
    dest = tmp_path / "fetch" / "v3"
    with pytest.raises(UnsafeFileNameError) as err:
        store.fetch(3, dest)
    assert "weights version 3" in str(err.value) and repr(name) in str(err.value)
    assert err.value.version == 3 and err.value.name == name
    assert _files_under(tmp_path) == before  # nothing downloaded, inside or outside dest
    with pytest.raises(UnsafeFileNameError, match="version 3"):
        store.manifest(3)


@pytest.mark.servers
def test_ok_names_still_fetch_next_to_a_refused_version(store, tmp_path):
    write_checkpoint(tmp_path / "src")
    m1 = store.publish(1, tmp_path / "src")
    store.publish(2, tmp_path / "src")
    _forge(store, 2, "../evil")
    dest, got = store.fetch(1, tmp_path / "ok")
    assert sorted(f.name for f in got.files) == sorted(f.name for f in m1.files)
    assert _files_under(dest) == sorted([MANIFEST, *(f.name for f in m1.files)])
    with pytest.raises(UnsafeFileNameError):
        store.fetch(None, tmp_path / "latest")  # latest is the forged one


@pytest.mark.servers
def test_publish_refuses_a_name_readers_would_refuse_and_uploads_nothing(store, tmp_path):
    write_checkpoint(tmp_path / "src")
    (tmp_path / "src" / "..\\evil").write_bytes(b"x")  # a legal file name on Linux, a path on Windows
    with pytest.raises(UnsafeFileNameError, match=r"weights version 4: manifest file name '\.\.\\\\evil' refused"):
        store.publish(4, tmp_path / "src")
    assert store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)["KeyCount"] == 0


@pytest.mark.servers
def test_a_symlink_in_the_fetch_directory_cannot_carry_a_file_outside(store, tmp_path):
    write_checkpoint(tmp_path / "src")
    store.publish(5, tmp_path / "src")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "config.json").symlink_to(outside)
    with pytest.raises(UnsafeFileNameError, match=r"'config.json' refused: resolves to .*outside the fetch directory"):
        store.fetch(5, dest)
    assert outside.read_text() == "keep me"


@pytest.mark.servers
def test_an_index_mapping_tensors_to_a_file_outside_the_version_is_refused(store, tmp_path):
    write_checkpoint(tmp_path / "src")
    index = tmp_path / "src" / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    first = sorted(doc["weight_map"])[0]
    doc["weight_map"][first] = "../../other-job/model.safetensors"
    index.write_text(json.dumps(doc))
    store.publish(6, tmp_path / "src")
    with pytest.raises(UnsafeFileNameError,
                       match=r"'\.\./\.\./other-job/model.safetensors' refused: named by model.safetensors.index.json"):
        store.fetch(6, tmp_path / "dest")
    assert not (tmp_path / "dest" / MANIFEST).exists()  # the version never looks fetched
