"""A loopback TCP proxy that can take its upstream away: an S3 outage on demand, mid-transfer.

``trip(method, path)`` arms it: the next HTTP request whose request line matches is let
through for ``after_bytes`` (of the request body for PUT, of the response for GET), then
every connection is cut and new ones are refused for ``outage_s`` — what clients see when
the store stops in the middle of an upload or a download.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Trip:
    method: bytes
    path: re.Pattern
    after_bytes: int
    outage_s: float
    fired_at: float | None = None
    request: str | None = None
    ended_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event)


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.trips: list[Trip] = []
        self._armed: Trip | None = None
        self._down_until = 0.0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="tcp-proxy")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def trip(self, method: str, path: str, *, after_bytes: int = 4096, outage_s: float = 20.0) -> Trip:
        t = Trip(method.encode(), re.compile(path.encode()), after_bytes, outage_s)
        self.trips.append(t)
        self._armed = t
        return t

    # ---- the proxy ----------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def open_server():
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            return server

        self._server = self._loop.run_until_complete(open_server())
        self._ready.set()
        self._loop.run_forever()

    def _down(self) -> bool:
        return time.monotonic() < self._down_until

    def _cut(self, trip: Trip) -> None:
        trip.fired_at = time.monotonic()
        self._down_until = trip.fired_at + trip.outage_s
        for w in list(self._writers):
            w.transport.abort()
        self._loop.call_later(trip.outage_s, self._back, trip)

    def _back(self, trip: Trip) -> None:
        trip.ended_at = time.monotonic()
        trip.done.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down():
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        watch: dict = {"trip": None, "left": 0}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, from_client: bool) -> None:
            try:
                while chunk := await src.read(65536):
                    trip = self._armed
                    if from_client and trip is not None and watch["trip"] is None:
                        m = re.search(rb"(?m)^(GET|PUT) (\S+) HTTP/1\.1", chunk)
                        if m and m.group(1) == trip.method and trip.path.search(m.group(2)):
                            self._armed = None
                            trip.request = m.group(0).decode(errors="replace")
                            # From the request line on (PUT: headers and the body's start; GET: the response).
                            watch.update(trip=trip, left=trip.after_bytes)
                    counting = watch["trip"] is not None and (watch["trip"].method == b"PUT") == from_client
                    if counting:
                        if len(chunk) >= watch["left"]:
                            dst.write(chunk[: max(watch["left"], 0)])
                            await dst.drain()
                            self._cut(watch["trip"])
                            return
                        watch["left"] -= len(chunk)
                    dst.write(chunk)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort() if self._down() else dst.close()

        try:
            await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_writer)
