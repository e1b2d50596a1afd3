"""The AgentEnv reference server for tests: in this event loop, or as its own process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import asynccontextmanager

from aiohttp import web

from kuberl.workloads.agentenv.server import EnvServer, EnvSettings, serving_options
from kuberl.workloads.localproc import free_port


@asynccontextmanager
async def serving(settings: EnvSettings):
    """(server, base URL) of an EnvServer on a loopback port, with the options the process uses."""
    server = EnvServer(settings)
    runner = web.AppRunner(server.app(), **serving_options(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield server, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


def start_process(*args: str, advertise_self: bool, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`python -m kuberl.workloads.agentenv` on a free loopback port, answering /healthz."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "kuberl.workloads.agentenv", "--host", "127.0.0.1", "--port", str(port), *args]
    if advertise_self:
        cmd += ["--advertise-url", url]
    base_env = {k: v for k, v in os.environ.items() if k != "POD_IP"}
    proc = subprocess.Popen(cmd, env={**base_env, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc, url


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                return
        except OSError:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, f"the env server at {url} never answered"
            time.sleep(0.1)


def stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/stats", timeout=5) as r:
        return json.loads(r.read())


async def raw_request_head(port: int, path: str, content_length: int, partial_body: bytes = b""):
    """A connection that has sent a request's headers (and maybe part of its body), then waits:
    a slow client, or a slow-loris one. Returns (reader, writer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {content_length}\r\n\r\n".encode() + partial_body)
    await writer.drain()
    return reader, writer


async def read_response(reader: asyncio.StreamReader, timeout: float = 10) -> tuple[int, dict]:
    """(status, JSON body) of one HTTP/1.1 response read off a raw connection."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(ln.split(":", 1)[1]) for ln in lines[1:] if ln.lower().startswith("content-length:"))
        return status, json.loads(await reader.readexactly(length))
