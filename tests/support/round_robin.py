"""A round-robin HTTP proxy: what a Kubernetes Service does to the requests of an AgentEnv.

Each request, whatever episode it belongs to, goes to the next backend in turn, as kube-proxy
spreads connections over a Service's pods. The proxy opens a fresh upstream connection per
request (no pooling), so no request sticks to the backend of an earlier one.
"""

from __future__ import annotations

from collections import Counter

import aiohttp
from aiohttp import web


class RoundRobinProxy:
    def __init__(self, backends: list[str]):
        self.backends = [b.rstrip("/") for b in backends]
        self.sent: Counter[str] = Counter()  # requests forwarded, per backend
        self._next = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _forward(self, request: web.Request) -> web.Response:
        backend = self.backends[self._next % len(self.backends)]
        self._next += 1
        self.sent[backend] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        async with aiohttp.ClientSession() as s, s.request(request.method, backend + request.path_qs,
                                                              data=await request.read(), headers=headers) as r:
            return web.Response(status=r.status, body=await r.read(), content_type=r.content_type)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
