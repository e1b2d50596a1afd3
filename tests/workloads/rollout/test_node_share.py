"""One download per node (rollout.weightFetch perNode): claims in the job's KV on real NATS,
files from the store on SeaweedFS, copies between agents over the relay, every copy checked
against the store's manifest and replaced by a download when it is wrong or never comes."""

from __future__ import annotations

import asyncio
import filecmp
import time
import urllib.error
import urllib.request
import uuid

import pytest

from kuberl.workloads.buffer import fetch_claims
from kuberl.workloads.buffer.admin import BufferConfig, create_job_streams
from kuberl.workloads.buffer.fetch_claims import FAILED, READY, Claim, waiting_verdict
from kuberl.workloads.buffer.stream import JobBuffer
from kuberl.workloads.config import NODE_NAME_ENV
from kuberl.workloads.policy.tiny.model import TinyConfig, seeded_model
from kuberl.workloads.rollout.node_share import NodeShare
from kuberl.workloads.weights.manifest import MANIFEST
from kuberl.workloads.weights.relay import file_path
from kuberl.workloads.weights.stages import StageClock
from kuberl.workloads.weights.store import WeightStore
from kuberl.workloads.weights.sync import publish_policy

PREFIX = "team-a/job-1/weights"


def test_a_waiter_copies_when_ready_and_goes_to_the_store_when_the_claim_fails_or_falls_silent():
    claim = Claim("a", "http://x", "t")
    assert waiting_verdict(claim, 0.0) == "wait"
    assert waiting_verdict(claim, fetch_claims.SILENT_AFTER_S + 1) == "store"
    assert waiting_verdict(Claim("a", "http://x", "t", READY), 10**6) == "copy"  # ready stays ready
    assert waiting_verdict(Claim("a", "http://x", "t", FAILED), 0.0) == "store"
    assert waiting_verdict(None, 0.0) == "store"  # forgotten: the claimant dropped the version
    assert fetch_claims.claim_key("ip-10-0-0-1.ec2.internal", 7) == "fetch.ip-10-0-0-1_ec2_internal.v00000007"


class Agent:
    """One agent's store client (its S3 GETs counted), scratch and share of the node."""

    def __init__(self, s3_server, bucket: str, claims, scratch, name: str, node: str, monkeypatch):
        self.store = WeightStore(s3_server.client(), bucket, PREFIX)
        self.gets = []
        self.store.client.meta.events.register("before-call.s3.GetObject", lambda params,
                                               **_: self.gets.append(params["url_path"]))
        monkeypatch.setenv(NODE_NAME_ENV, node)
        self.scratch = scratch / name
        self.scratch.mkdir()
        self.share = NodeShare(claims, self.scratch, name)
        self.clocks: list[StageClock] = []

    def data_gets(self) -> list[str]:
        return [k for k in self.gets if not k.endswith(MANIFEST)]

    async def fetch(self, version: int):
        clock = StageClock()
        self.clocks.append(clock)
        (path, manifest), source = await self.share.fetch(
            version, lambda peer: self.store.fetch(version, self.scratch / f"v{version:08d}", clock=clock, peer=peer),
            lambda got: got[1].version)
        return path, manifest, source


class Job:
    """One job's buffer (its KV holds the claims) and the agents made for it, stopped at the end."""

    def __init__(self, nats_url: str, s3_server, bucket: str, scratch, monkeypatch):
        self.nats_url, self.s3_server, self.bucket, self.scratch, self.monkeypatch = (
            nats_url,
            s3_server,
            bucket,
            scratch,
            monkeypatch,
        )
        self.made: list[Agent] = []

    async def __aenter__(self) -> Job:
        name = f"share-{uuid.uuid4().hex[:8]}"
        await create_job_streams(self.nats_url, "default", name, BufferConfig())
        self.buf = await JobBuffer.open(self.nats_url, "default", name, BufferConfig())
        self.claims = self.buf.fetch_claims
        return self

    async def agent(self, name: str, node: str = "node-a") -> Agent:
        agent = Agent(self.s3_server, self.bucket, self.claims, self.scratch, name, node, self.monkeypatch)
        await agent.share.start()
        self.made.append(agent)
        return agent

    async def __aexit__(self, *_) -> None:
        for agent in self.made:
            await agent.share.stop()
        await self.buf.close()


@pytest.fixture
def job(nats_server, s3_server, s3_bucket, tmp_path, monkeypatch):
    return Job(nats_server.url, s3_server, s3_bucket, tmp_path, monkeypatch)


@pytest.fixture
def published(s3_server, s3_bucket):
    store = WeightStore(s3_server.client(), s3_bucket, PREFIX)

    def publish(version: int):
        return publish_policy(store, seeded_model(version).state_dict(), TinyConfig().to_hf(), version, dtype="float32")

    return publish


@pytest.mark.servers
async def test_the_agents_of_a_node_download_a_version_once_and_copy_it_from_one_another(job, published):
    await asyncio.to_thread(published, 1)
    async with job:
        a, b, c = [await job.agent(n) for n in ("a", "b", "c")]
        elsewhere = await job.agent("d", node="node-b")
        results = await asyncio.gather(*(x.fetch(1) for x in (a, b, c, elsewhere)))
    on_node = results[:3]
    assert sorted(r[2] for r in on_node) == ["relay", "relay", "store-claimed"]
    assert results[3][2] == "store-claimed"  # another node: its own claim, its own download
    claimant = next(x for x, r in zip((a, b, c), on_node, strict=True) if r[2] == "store-claimed")
    copiers = [x for x, r in zip((a, b, c), on_node, strict=True) if r[2] == "relay"]
    names = [f.name for f in results[0][1].files]
    for path, _, _ in results:  # every copy bit for bit what the store holds
        assert all(filecmp.cmp(results[3][0] / n, path / n, shallow=False) for n in names)
    # The store served the node's files once: the copiers read only the manifest from it.
    assert claimant.data_gets() and all(x.data_gets() == [] for x in copiers), [x.gets for x in (a, b, c)]
    assert claimant.share.server.served == len(names) * 2
    for x in copiers:
        stages = x.clocks[0].seconds()
        assert "relay" in stages and "download" not in stages, stages


@pytest.mark.servers
async def test_a_copy_that_differs_from_the_store_manifest_is_downloaded_instead(job, published):
    await asyncio.to_thread(published, 1)
    async with job:
        a, b = await job.agent("a"), await job.agent("b")
        _, manifest, source = await a.fetch(1)
        assert source == "store-claimed"
        # The claimant's copy goes bad after it was checked (a disk error, or a hostile relay).
        victim = a.scratch / "v00000001" / max(manifest.files, key=lambda f: f.size).name
        data = bytearray(victim.read_bytes())
        data[100] ^= 0xFF
        victim.write_bytes(bytes(data))
        path, _, source = await b.fetch(1)
    assert source == "store" and b.data_gets(), "the mismatch sent the copier to the store"
    ref, _ = await asyncio.to_thread(WeightStore(a.store.client, a.store.bucket, PREFIX).fetch, 1,
                                     a.scratch.parent / "ref")
    assert all(filecmp.cmp(ref / f.name, path / f.name, shallow=False) for f in manifest.files)


@pytest.mark.servers
async def test_a_claimant_that_falls_silent_is_given_up_on(job, published, monkeypatch):
    monkeypatch.setattr(fetch_claims, "SILENT_AFTER_S", 1.0)
    await asyncio.to_thread(published, 1)
    async with job:
        # Killed mid-download: its claim says fetching and is never refreshed again.
        assert await job.claims.claim("node-a", 1, Claim("dead", "http://127.0.0.1:9", "t", at=time.time())) is None
        b = await job.agent("b")
        started = time.monotonic()
        _, _, source = await b.fetch(1)
    assert source == "store" and time.monotonic() - started < 15


@pytest.mark.servers
async def test_the_relay_serves_only_complete_versions_and_only_with_the_claims_token(job, published):
    await asyncio.to_thread(published, 1)
    async with job:
        a = await job.agent("a")
        _, manifest, _ = await a.fetch(1)
        name = manifest.files[0].name
        (a.scratch / "v00000002").mkdir()  # a version still arriving: no manifest yet
        (a.scratch / "v00000002" / name).write_bytes(b"half")

        def get(version: int, token: str) -> int:
            request = urllib.request.Request(a.share.url + file_path(version, name),
                                             headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status
            except urllib.error.HTTPError as e:
                return e.code

        token = a.share.server.token
        assert await asyncio.to_thread(get, 1, token) == 200
        assert await asyncio.to_thread(get, 1, "guessed") == 403
        assert await asyncio.to_thread(get, 2, token) == 404
