"""A loopback TCP proxy that can take its upstream away: an S3 outage on demand, mid-transfer.

``trip(method, path)`` arms it: the next HTTP request whose request line matches is let
through up to a point inside its body (the request's for PUT, the response's for GET): after
``after_bytes`` of it, or half of it when the body is shorter. Then every connection is cut
and new ones are refused for ``outage_s``: what clients see when the store stops in the
middle of an upload or a download. A matched message with a body under two bytes (an empty
object, a HEAD-like answer) cannot be cut inside, so it passes and the trip stays armed.
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
    body_bytes: int | None = None  # the cut message's Content-Length (None: chunked)
    body_passed: int = 0  # of its body, what got through before the cut
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
        async def shut() -> None:
            # Connections still open end here, while the loop runs: left to the loop's
            # collection, their cleanup would call into a closed loop.
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

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
        # The matched request, once seen: the message to cut (PUT: the request, GET: its response).
        watch: dict = {"trip": None, "head": b"", "cut_at": None, "body_cut": 0, "seen": 0}

        def forget() -> None:
            watch.update(trip=None, head=b"", cut_at=None, body_cut=0, seen=0)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, from_client: bool) -> None:
            try:
                while chunk := await src.read(65536):
                    trip = self._armed
                    start = 0  # where the watched message begins in this chunk
                    if from_client and trip is not None and watch["trip"] is None:
                        m = re.search(rb"(?m)^(GET|PUT) (\S+) HTTP/1\.1", chunk)
                        if m and m.group(1) == trip.method and trip.path.search(m.group(2)):
                            self._armed = None
                            trip.request = m.group(0).decode(errors="replace")
                            watch.update(trip=trip)
                            start = m.start()
                    trip = watch["trip"]
                    if trip is not None and (trip.method == b"PUT") == from_client:
                        message = chunk[start:]
                        if watch["cut_at"] is None:
                            watch["head"] += message
                            end = watch["head"].find(b"\r\n\r\n")
                            if end >= 0:
                                head = watch["head"][: end + 4]
                                trip.body_bytes, passing = content_length(head), body_cut(head, trip.after_bytes)
                                if passing is None:
                                    forget()
                                    self._armed = self._armed or trip  # nothing to cut inside: wait for the next
                                else:
                                    watch.update(cut_at=len(head) + passing, body_cut=passing)
                        cut_at = watch["cut_at"]
                        if cut_at is not None and watch["seen"] + len(message) >= cut_at:
                            dst.write(chunk[: start + cut_at - watch["seen"]])
                            await dst.drain()
                            trip.body_passed = watch["body_cut"]
                            self._cut(trip)
                            return
                        if watch["trip"] is not None:
                            watch["seen"] += len(message)
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


def content_length(head: bytes) -> int | None:
    """An HTTP message head's Content-Length; None without one (a chunked body)."""
    m = re.search(rb"(?im)^content-length:[ \t]*(\d+)", head)
    return int(m.group(1)) if m else None


def body_cut(head: bytes, after_bytes: int) -> int | None:
    """How much of the body after ``head`` gets through before the cut: ``after_bytes``, or half
    of a shorter body, so a client never holds the whole of it; None for a body under two
    bytes, which has no inside to cut in. A chunked body, of unknown length, gets ``after_bytes``."""
    length = content_length(head)
    if length is None:
        return after_bytes
    return None if length < 2 else min(after_bytes, length // 2)
