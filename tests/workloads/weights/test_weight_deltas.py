"""Delta versions: stored as XOR against the version before, rebuilt bit-exactly by the
fetcher (with the parent local or fetched along the chain), a whole version every N, chains
kept by pruning, and a broken chain refused or answered with the newest whole version."""

from __future__ import annotations

import filecmp

import pytest
import torch

from kuberl.workloads.weights import delta
from kuberl.workloads.weights.manifest import (
    MANIFEST,
    Manifest,
    ParentMissingError,
    delta_allowed,
    local_version,
    local_versions,
    plan_prune,
)
from kuberl.workloads.weights.hf_files import save_sharded
from kuberl.workloads.weights.store import WeightStore
from kuberl.workloads.weights.sync import publish_policy

pytestmark = pytest.mark.servers

CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64}


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"model.embed_tokens.weight": torch.randn(512, 64, generator=g),
            "model.layers.0.mlp.up_proj.weight": torch.randn(256, 64, generator=g),
            "model.norm.weight": torch.ones(64)}


def stepped(state: dict[str, torch.Tensor], share: float, seed: int) -> dict[str, torch.Tensor]:
    """An optimizer step's worth of change: `share` of the weights moved a little."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        moved = torch.rand(v.shape, generator=g) < share
        out[k] = torch.where(moved, v * (1 + 0.05 * torch.randn(v.shape, generator=g)), v)
    return out


def same_files(a, b, names) -> bool:
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


@pytest.fixture
def store(s3_server, s3_bucket):
    return WeightStore(s3_server.client(), s3_bucket, "team-a/job-1/weights")


def test_delta_allowed_every_nth_version_whole():
    whole = Manifest(version=1, files=[], dtype="bfloat16")
    assert not delta_allowed(None, 4) and not delta_allowed(whole, 1)
    assert delta_allowed(whole, 4)
    assert delta_allowed(Manifest(version=3, files=[], dtype="bfloat16", parent=2, depth=2), 4)
    assert not delta_allowed(Manifest(version=4, files=[], dtype="bfloat16", parent=3, depth=3), 4)


def test_prune_keeps_the_chain_a_kept_version_is_built_on():
    parents = {5: 4, 4: 3, 3: None, 2: 1, 1: None}
    assert plan_prune([1, 2, 3, 4, 5], [], keep=1, parent_of=parents) == [1, 2]
    assert plan_prune([1, 2, 3, 4, 5], [], keep=3, parent_of=parents) == [1, 2]
    assert plan_prune([3, 4, 5, 6], [], keep=1, parent_of={6: None}) == [3, 4, 5]


def test_encoding_is_exact_on_odd_sizes_and_refuses_a_parent_of_another_size(tmp_path, monkeypatch):
    parent, new = bytes(range(256)) * 4099 + b"xyz", bytearray(bytes(range(256)) * 4099 + b"xyz")
    new[7] ^= 0xFF
    new[-1] ^= 0x01
    (tmp_path / "p").write_bytes(parent)
    (tmp_path / "n").write_bytes(bytes(new))
    stored = delta.encode(tmp_path / "n", tmp_path / "p", tmp_path / "d")
    assert stored < len(new) / 100
    delta.decode(tmp_path / "d", tmp_path / "p", tmp_path / "r")
    assert (tmp_path / "r").read_bytes() == bytes(new)
    (tmp_path / "short").write_bytes(parent[:-1])
    with pytest.raises(ValueError, match="differ in size"):
        delta.encode(tmp_path / "n", tmp_path / "short", tmp_path / "d2")
    with pytest.raises(ValueError, match="longer than its parent"):
        delta.decode(tmp_path / "d", tmp_path / "short", tmp_path / "r2")
    monkeypatch.setattr(delta, "pairable", lambda new, parent: True)  # the parent shrank after the size check
    with pytest.raises(ValueError, match="changed while being read"):
        delta.encode(tmp_path / "n", tmp_path / "short", tmp_path / "d3")


def test_a_sync_reports_the_seconds_of_each_stage(store, tmp_path):
    """weights.stages: a delta version's publish and fetch each fill their stages, and
    publish_policy adds the trainer's own (quantise, serialise)."""
    from kuberl.workloads.weights.stages import StageClock

    save_sharded({k: v.bfloat16() for k, v in weights().items()}, tmp_path / "v1", config=CONFIG)
    store.publish(1, tmp_path / "v1")
    save_sharded({k: v.bfloat16() for k, v in stepped(weights(), share=0.03, seed=1).items()}, tmp_path / "v2",
                 config=CONFIG)
    published, fetched = StageClock(), StageClock()
    store.publish(2, tmp_path / "v2", parent=local_version(tmp_path / "v1"), clock=published)
    store.fetch(2, tmp_path / "got", have=[local_version(tmp_path / "v1")], clock=fetched)
    # Every file of the version went as a delta: hashed by the encoder and the decoder as
    # they read and write it, with no checksum stage of their own.
    assert set(published.seconds()) == {"encode", "upload", "manifest"}
    assert set(fetched.seconds()) == {"download", "reconstruct", "verify"}
    assert all(v >= 0 for v in [*published.seconds().values(), *fetched.seconds().values()])
    whole = publish_policy(store, weights(), CONFIG, 3, dtype="bfloat16")
    assert set(whole.stages) == {"quantise", "serialise", "checksum", "upload", "manifest"}
    assert whole.stages["quantise"] + whole.stages["serialise"] + whole.stages["manifest"] <= whole.seconds


def test_a_delta_spans_blocks_and_a_corrupt_or_hostile_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(delta, "BLOCK", 4096)  # several blocks, the last one short and odd
    parent = bytes(range(256)) * 40 + b"q"
    new = bytearray(parent)
    for i in (0, 4095, 4096, 9000, len(new) - 1):
        new[i] ^= 0x5A
    (tmp_path / "p").write_bytes(parent)
    (tmp_path / "n").write_bytes(bytes(new))
    delta.encode(tmp_path / "n", tmp_path / "p", tmp_path / "d")
    delta.decode(tmp_path / "d", tmp_path / "p", tmp_path / "r")
    assert (tmp_path / "r").read_bytes() == bytes(new)
    good = (tmp_path / "d").read_bytes()
    hostile = {
        "truncated": good[:-1],
        "bitmap cut": good[:20],
        "huge block": delta._HEADER.pack(2**31, 8, 0) + good[12:],
        "more words than the block": delta._HEADER.pack(4096, 8, 4000) + good[12:],
        "count off by one": good[:8] + (int.from_bytes(good[8:12], "little") + 1).to_bytes(4, "little") + good[12:],
        "kept bytes off by one": good[:4] + (int.from_bytes(good[4:8], "little") + 1).to_bytes(4, "little") + good[8:],
    }
    for why, data in hostile.items():
        (tmp_path / "bad").write_bytes(data)
        with pytest.raises(ValueError, match="truncated|corrupt"):
            delta.decode(tmp_path / "bad", tmp_path / "p", tmp_path / "r2")
            raise AssertionError(why)
    # One word, and a bitmap whose second bit (a word past the block's end) is set.
    (tmp_path / "p1").write_bytes(b"ab")
    (tmp_path / "bad").write_bytes(delta._HEADER.pack(2, 1, 1) + bytes([0x80, 0x40]) + b"zz")
    with pytest.raises(ValueError, match="corrupt"):
        delta.decode(tmp_path / "bad", tmp_path / "p1", tmp_path / "r3")


def test_a_delta_version_moves_a_fraction_of_the_bytes_and_rebuilds_bit_exactly(store, tmp_path):
    first, second = weights(), None
    save_sharded({k: v.bfloat16() for k, v in first.items()}, tmp_path / "v1", config=CONFIG)
    whole = store.publish(1, tmp_path / "v1")
    assert whole.parent is None and local_version(tmp_path / "v1").manifest == whole
    second = stepped(first, share=0.03, seed=1)
    save_sharded({k: v.bfloat16() for k, v in second.items()}, tmp_path / "v2", config=CONFIG)
    m = store.publish(2, tmp_path / "v2", parent=local_version(tmp_path / "v1"))
    assert m.parent == 1 and m.depth == 1
    shard = next(f for f in m.files if f.name == "model.safetensors")
    assert shard.encoding == delta.ENCODING and shard.stored_bytes < 0.2 * shard.size
    assert m.stored_bytes < 0.3 * m.total_bytes
    names = [f.name for f in m.files]

    # With the parent local (an engine holding version 1): only the deltas come down.
    dest, got = store.fetch(1, tmp_path / "scratch" / "v00000001")
    dest, got = store.fetch(2, tmp_path / "scratch" / "v00000002", have=local_versions(tmp_path / "scratch"))
    assert got.digest == m.digest and same_files(dest, tmp_path / "v2", names)
    # With nothing local: the parent is fetched first, beside the destination, then removed.
    dest, got = store.fetch(2, tmp_path / "fresh" / "v00000002")
    assert same_files(dest, tmp_path / "v2", names)
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["v00000002"]
    assert not [p for p in dest.iterdir() if p.name.endswith(".partial")]


def test_the_trainer_publishes_a_whole_version_every_n_and_fetchers_follow_the_chain(store, tmp_path):
    keep_in, state, last, manifests = tmp_path / "published", weights(), None, {}
    for version in range(1, 6):
        published = publish_policy(store, state, CONFIG, version, dtype="bfloat16", keep_in=keep_in, last=last,
                                   full_every=3)
        manifests[version] = store.manifest(version)
        assert published.local is not None and published.local.version == version
        assert [p.name for p in keep_in.iterdir()] == [f"v{version:08d}"]  # only the latest stays
        last, state = published.local, stepped(state, share=0.02, seed=version)
    assert [manifests[v].parent for v in range(1, 6)] == [None, 1, 2, None, 4]
    assert [manifests[v].depth for v in range(1, 6)] == [0, 1, 2, 0, 1]
    # An agent that starts at version 3 rebuilds it from 1 and 2; then 5 from 4.
    scratch = tmp_path / "agent"
    dest, got = store.fetch(3, scratch / "v00000003", have=local_versions(scratch))
    assert got.digest == manifests[3].digest
    store.prune(keep=1)  # keeps 5 and the whole 4 it is built on
    assert store.versions() == [4, 5]
    dest, got = store.fetch(5, scratch / "v00000005", have=local_versions(scratch))
    assert got.digest == manifests[5].digest and published.local.path.name == "v00000005"
    assert same_files(dest, published.local.path, [f.name for f in manifests[5].files])


def test_a_broken_chain_is_refused_or_answered_with_the_newest_whole_version(store, tmp_path):
    keep_in, state, last = tmp_path / "published", weights(), None
    for version in (1, 2, 3):
        last = publish_policy(store, state, CONFIG, version, dtype="bfloat16", keep_in=keep_in, last=last,
                              full_every=10).local
        state = stepped(state, share=0.02, seed=version)
    store.client.delete_object(Bucket=store.bucket, Key=store._key(2, MANIFEST))  # version 2 gone
    with pytest.raises(ParentMissingError, match="stored against version 2"):
        store.fetch(3, tmp_path / "a" / "v00000003")
    dest, got = store.fetch(3, tmp_path / "b" / "v00000003", whole_if_parent_missing=True)
    assert got.version == 1 and dest.name == "v00000001"
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["v00000001"]
    # A fetcher already holding that whole version downloads nothing more.
    again, got = store.fetch(3, tmp_path / "b" / "v00000003", have=local_versions(tmp_path / "b"),
                             whole_if_parent_missing=True)
    assert got.version == 1 and again == dest


def test_a_file_that_changed_everywhere_is_stored_whole(store, tmp_path):
    def noise(seed: int) -> dict[str, torch.Tensor]:  # every bit random: nothing a delta could save
        g = torch.Generator().manual_seed(seed)
        return {"w": torch.randint(-2**15, 2**15 - 1, (512, 64), generator=g, dtype=torch.int16).view(torch.bfloat16)}

    save_sharded(noise(0), tmp_path / "v1", config=CONFIG)
    store.publish(1, tmp_path / "v1")
    save_sharded(noise(1), tmp_path / "v2", config=CONFIG)
    m = store.publish(2, tmp_path / "v2", parent=local_version(tmp_path / "v1"))
    shard = next(f for f in m.files if f.name == "model.safetensors")
    assert shard.encoding == "raw" and shard.stored_bytes == shard.size
    dest, _ = store.fetch(2, tmp_path / "dst" / "v00000002")
    assert same_files(dest, tmp_path / "v2", [f.name for f in m.files])


def test_a_manifest_whose_parent_is_not_earlier_is_refused():
    from kuberl.workloads.weights.manifest import WeightStoreError

    for parent in (3, 7, -1):
        looping = Manifest(version=3, files=[], dtype="bfloat16", parent=parent, depth=1)
        with pytest.raises(WeightStoreError, match="not an earlier version"):
            Manifest.from_json(looping.to_json())
