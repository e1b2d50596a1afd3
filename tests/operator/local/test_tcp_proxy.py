"""The fault drills' S3 outage proxy cuts inside the body of the message it matched, never after it.

A cut that landed after a body had all arrived (a matched file smaller than ``after_bytes``,
the count then running on into the next answer on the same keep-alive connection) let the
fault drill's download cut miss the download it was aimed at.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.tcp_proxy import TcpProxy, body_cut

OUTAGE_S = 0.5


class _Store(BaseHTTPRequestHandler):
    """GET /<n>/...: n bytes; PUT: reads the body, answers its length."""

    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients use it

    def do_GET(self) -> None:
        body = b"w" * int(self.path.split("/")[1])
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        got = len(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Length", str(len(str(got))))
        self.end_headers()
        self.wfile.write(str(got).encode())

    def log_message(self, *args) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # the cut connections, on purpose


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    store = _QuietServer(("127.0.0.1", 0), _Store)
    threading.Thread(target=store.serve_forever, daemon=True).start()
    proxy = TcpProxy("127.0.0.1", store.server_address[1]).start()
    yield proxy
    proxy.stop()
    store.shutdown()
    store.server_close()


def test_the_cut_point_is_inside_the_body():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
    assert body_cut(head % 100_000, 4096) == 4096
    assert body_cut(head % 300, 4096) == 150  # a short body: half of it
    assert body_cut(head % 1, 4096) is None and body_cut(head % 0, 4096) is None
    assert body_cut(b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 4096) == 4096


def test_a_download_is_cut_mid_body_and_a_body_too_short_to_cut_leaves_the_trip_armed(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    trip = proxy.trip("GET", r"/v\d{8}/model", after_bytes=4096, outage_s=OUTAGE_S)
    conn.request("GET", "/1/v00000001/model.safetensors.index.json")  # one byte: nothing inside to cut
    assert conn.getresponse().read() == b"w" and trip.fired_at is None
    conn.request("GET", "/20000/manifest.json")  # on the same connection, not matched: passes whole
    assert len(conn.getresponse().read()) == 20000 and trip.fired_at is None
    conn.request("GET", "/300/v00000002/model.safetensors")
    with pytest.raises(http.client.IncompleteRead) as cut:
        conn.getresponse().read()
    assert len(cut.value.partial) == 150  # half of a body under after_bytes
    assert trip.request.startswith("GET /300/") and (trip.body_bytes, trip.body_passed) == (300, 150)
    with pytest.raises(OSError):  # refused while the store is out
        fresh = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        fresh.request("GET", "/5/a")
        fresh.getresponse().read()
    assert trip.done.wait(OUTAGE_S + 5)
    fresh = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    fresh.request("GET", "/100000/v00000003/model.safetensors")  # back, and disarmed
    assert len(fresh.getresponse().read()) == 100_000


def test_an_upload_is_cut_after_after_bytes_of_its_body(proxy):
    trip = proxy.trip("PUT", r"/v\d{8}/model", after_bytes=4096, outage_s=OUTAGE_S)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    with pytest.raises(OSError):
        conn.request("PUT", "/0/v00000001/model.safetensors", body=b"x" * 1_000_000)
        conn.getresponse().read()
    assert (trip.body_bytes, trip.body_passed) == (1_000_000, 4096) and trip.fired_at is not None
