"""NATS credentials from the job's Secret: its three forms, a mounted directory, the operator's bridge,
against a real nats-server that requires them."""

from __future__ import annotations

import signal

import nats
import pytest

from kuberl.operator.adapters.nats import NatsBridge, NatsUnavailable
from kuberl.workloads.buffer.admin import BufferConfig, connect
from kuberl.workloads.buffer.auth import CredentialsError, auth_options, process_auth_options, read_directory
from kuberl.workloads.config import NATS_CREDENTIALS_DIR_ENV
from asyncio import run
from tests.support.fixtures_servers import running_nats

USER = {"user": "kuberl", "password": "s3cr3t-pw"}


@pytest.fixture(scope="module")
def guarded_nats():
    yield from running_nats(signal.SIGKILL, auth=USER)


def test_the_secret_forms_become_connect_options():
    assert auth_options({"user": "u", "password": "p\n"}) == {"user": "u", "password": "p"}
    assert auth_options({"token": " t0k \n"}) == {"token": "t0k"}
    creds = "-----BEGIN NATS USER JWT-----\nabc\n------END NATS USER JWT------\n"
    assert str(auth_options({"creds": creds, "user": "ignored", "password": "x"})["user_credentials"]) == creds.strip()
    with pytest.raises(CredentialsError, match="only one of `user` and `password`"):
        auth_options({"user": "u"})
    with pytest.raises(CredentialsError, match="none of the keys"):
        auth_options({"other": "x"})


def test_a_mounted_secret_directory_is_what_the_process_connects_with(tmp_path, monkeypatch):
    (tmp_path / "user").write_text("u")
    (tmp_path / "password").write_text("p")
    (tmp_path / "unrelated").write_text("z")
    assert read_directory(tmp_path) == {"user": "u", "password": "p"}
    monkeypatch.delenv(NATS_CREDENTIALS_DIR_ENV, raising=False)
    assert process_auth_options() == {}
    monkeypatch.setenv(NATS_CREDENTIALS_DIR_ENV, str(tmp_path))
    assert process_auth_options() == {"user": "u", "password": "p"}
    (tmp_path / "password").unlink()
    with pytest.raises(CredentialsError, match=str(tmp_path)):
        process_auth_options()


def test_workload_connections_authenticate_with_the_mounted_secret(guarded_nats, tmp_path, monkeypatch):
    async def attempt():
        nc = await connect(guarded_nats.url, max_reconnect_attempts=0, allow_reconnect=False)
        try:
            await nc.publish("probe", b"x")
            await nc.flush()
        finally:
            await nc.close()

    monkeypatch.delenv(NATS_CREDENTIALS_DIR_ENV, raising=False)
    with pytest.raises(Exception, match="(?i)authorization"):
        run(attempt())
    for key, value in USER.items():
        (tmp_path / key).write_text(value)
    monkeypatch.setenv(NATS_CREDENTIALS_DIR_ENV, str(tmp_path))
    run(attempt())
    (tmp_path / "password").write_text("wrong")
    with pytest.raises(Exception, match="(?i)authorization"):
        run(attempt())


def test_the_operator_bridge_uses_each_jobs_credentials(guarded_nats):
    bridge = NatsBridge(timeout_s=2.0, retry_after_s=0.0)
    try:
        with pytest.raises(NatsUnavailable, match="credentialsSecret"):
            bridge.ensure_job(guarded_nats.url, "ns", "anonymous", BufferConfig(trajectories_max_bytes=16 * 1024**2))
        bridge.ensure_job(guarded_nats.url, "ns", "authed", BufferConfig(trajectories_max_bytes=16 * 1024**2),
                          auth=USER)
        assert bridge.backlog(guarded_nats.url, "ns", "authed", auth=USER) == {"prompts": 0, "trajectories": 0}
        assert bridge.delete_job(guarded_nats.url, "ns", "authed", auth=USER)
    finally:
        bridge.close()

    async def anonymous():
        await nats.connect(guarded_nats.url, max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=2)

    with pytest.raises(Exception, match="(?i)authorization"):
        run(anonymous())


def test_without_a_jobs_secret_the_operator_uses_its_own_mounted_credentials(guarded_nats, tmp_path, monkeypatch):
    """rbac.readJobSecrets=false: the operator reads no Secret and authenticates as itself."""
    for key, value in USER.items():
        (tmp_path / key).write_text(value)
    monkeypatch.setenv(NATS_CREDENTIALS_DIR_ENV, str(tmp_path))
    bridge = NatsBridge(timeout_s=2.0, retry_after_s=0.0)
    try:
        bridge.ensure_job(guarded_nats.url, "ns", "own-identity", BufferConfig(trajectories_max_bytes=16 * 1024**2))
        assert bridge.delete_job(guarded_nats.url, "ns", "own-identity")
    finally:
        bridge.close()
