"""The local servers (`kuberl.operator.local.servers`) that `kuberl run`, the fixtures and
the benches start: a port taken between its choice and weed's bind costs a retry, not the
session's S3 (every test after a failed session fixture errors)."""

from __future__ import annotations

import socket

from kuberl.operator.local import servers
from kuberl.operator.local.servers import SeaweedS3


def test_a_weed_port_taken_before_it_binds_is_retried_on_fresh_ports(tmp_path, monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    chosen, choose = [], servers.weed_ports

    def ports():
        picked = choose()
        if not chosen:  # the first choice gives the filer a port another process holds
            picked["filer.port"] = taken.getsockname()[1]
        chosen.append(picked)
        return picked

    monkeypatch.setattr(servers, "weed_ports", ports)
    server = SeaweedS3(tmp_path)
    try:
        server.start()
        assert len(chosen) == 2 and server.ports == chosen[1]
        client = server.client()
        client.create_bucket(Bucket="after-a-retry")
        assert client.list_buckets()["Buckets"][0]["Name"] == "after-a-retry"
    finally:
        server.stop()
        taken.close()
