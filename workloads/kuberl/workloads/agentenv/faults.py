"""Injected faults of the reference server, for rehearsing a job against a flaky environment.

`--fault-drop F` closes a fraction F of episode requests' connections without an answer (as
a crashed or restarted pod does); `--fault-error F` answers a fraction F with 500. Both act
on the episode routes only (health checks stay true: the pod looks fine, as a flaky one
does), before the request is handled, so a dropped step was never taken and a retry is safe.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True)
class Faults:
    drop: float = 0.0
    error: float = 0.0

    def __post_init__(self) -> None:
        for name, value in (("drop", self.drop), ("error", self.error)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--fault-{name} is a fraction between 0 and 1, got {value}")

    @property
    def any(self) -> bool:
        return self.drop > 0 or self.error > 0


def fault_middleware(faults: Faults, rng: random.Random, counters: dict[str, int]):
    @web.middleware
    async def inject(request: web.Request, handler) -> web.StreamResponse:
        if request.path.startswith("/episodes"):
            draw = rng.random()
            if draw < faults.drop:
                counters["fault_dropped"] = counters.get("fault_dropped", 0) + 1
                if request.transport is not None:
                    request.transport.abort()  # no answer, no FIN handshake: the client sees a reset
                raise web.HTTPServiceUnavailable()  # never sent: the connection is gone
            if draw < faults.drop + faults.error:
                counters["fault_errors"] = counters.get("fault_errors", 0) + 1
                return web.json_response({"error": "injected fault (--fault-error)"}, status=500)
        return await handler(request)

    return inject
