"""A rollout agent's weight versions, served to the other agents on its node.

One agent per node downloads a version from the store (`buffer.fetch_claims` decides
which); the others copy its files over the node's pod network from this server instead of
pulling the same bytes through the store again. The copy is not trusted: the reader takes
the version's manifest from the store and checks every file's size and sha256 against it
(`WeightStore.fetch` with ``peer``), so a wrong or hostile relay costs a download, never a
bad weight. The server answers only a reader that shows the token its claim carries (in
the job's KV, which only the job's processes read), and only files of complete versions
(their manifest written, `LocalVersion`), by the names their manifest lists.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.request
from pathlib import Path

from aiohttp import web

from kuberl.workloads.weights.manifest import local_version, version_name

COPY_TIMEOUT_S = 30.0  # per read of the socket, not per file: a stalled relay gives way to the store
CHUNK = 8 * 1024 * 1024


def file_path(version: int, name: str) -> str:
    return f"/weights/{version_name(version)}/{name}"


class RelayServer:
    """Serves ``root``'s complete ``v<N>`` directories (a fetcher's scratch) over HTTP."""

    def __init__(self, root: Path, token: str):
        self.root, self.token = Path(root), token
        self._runner: web.AppRunner | None = None
        self.served = 0  # files handed to other agents

    async def start(self, address: str, port: int) -> str:
        """Listen on ``address:port`` (0: any free port), the address the others reach it
        by and no other; returns its URL."""
        app = web.Application()
        app.router.add_get("/weights/{version}/{name}", self._get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, address, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        return f"http://{address}:{bound}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _get(self, request: web.Request) -> web.StreamResponse:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            raise web.HTTPForbidden(
                text="a weight relay serves the job's own agents: show the token of its fetch claim"
            )
        folder = self.root / request.match_info["version"]
        if folder.parent != self.root or not folder.name.startswith("v"):
            raise web.HTTPNotFound()
        held = local_version(folder)  # None until its manifest is written: the version is whole
        name = request.match_info["name"]
        if held is None or name not in {f.name for f in held.manifest.files}:
            raise web.HTTPNotFound(text=f"no complete version {folder.name} with a file {name!r} here")
        self.served += 1
        return web.FileResponse(folder / name)


def copy_file(url: str, token: str, version: int, name: str, dest: Path) -> str:
    """Copy one file of ``version`` from the relay at ``url`` to ``dest``; returns the sha256
    of what arrived, taken as it streamed by (the caller checks it against the store's
    manifest without reading the file again)."""
    request = urllib.request.Request(url + file_path(version, name), headers={"Authorization": f"Bearer {token}"})
    digest = hashlib.sha256()
    with urllib.request.urlopen(request, timeout=COPY_TIMEOUT_S) as response, dest.open("wb") as out:  # noqa: S310 (http to a peer)
        while block := response.read(CHUNK):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()
