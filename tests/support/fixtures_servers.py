"""Real nats-server (JetStream, file store) and SeaweedFS (`weed mini`, S3) for tests: the
servers of `kuberl.operator.local.servers` (the ones `kuberl run` and the benches start), in
fixtures. No in-memory fakes. Each is stopped in its fixture's finaliser (and on
interpreter exit as a backstop)."""

from __future__ import annotations

import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import pytest

from kuberl.operator.local.servers import NatsServer, SeaweedS3
from kuberl.workloads.localproc import dies_with_parent, find_binary, free_port

__all__ = [
    "NatsServer",
    "SeaweedS3",
    "dies_with_parent",
    "find_binary",
    "free_port",
    "fresh_nats_server",
    "nats_server",
    "running_nats",
    "s3_bucket",
    "s3_server",
]


def running_nats(stop_sig: int = signal.SIGTERM, auth: dict[str, str] | None = None):
    """A started NatsServer in a temp dir (requiring `auth` when given); stopped with
    `stop_sig` and removed afterwards. For `yield from` in a fixture."""
    root = Path(tempfile.mkdtemp(prefix="kuberl-nats-"))
    server = NatsServer(root, auth=dict(auth) if auth else None)
    server.start()
    try:
        yield server
    finally:
        server.stop(sig=stop_sig)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def nats_server():
    """One JetStream server for the session; tests use per-test job names to stay apart."""
    yield from running_nats()


@pytest.fixture
def fresh_nats_server():
    """A private server for tests that restart or kill it."""
    yield from running_nats(signal.SIGKILL)


@pytest.fixture(scope="session")
def s3_server():
    root = Path(tempfile.mkdtemp(prefix="kuberl-weed-"))
    server = SeaweedS3(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket per test on the session's SeaweedFS."""
    client = s3_server.client()
    name = f"t-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    yield name
