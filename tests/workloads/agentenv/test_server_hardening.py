"""The AgentEnv reference server under bad, big and slow requests (a real aiohttp server)."""

from __future__ import annotations

import argparse
import asyncio
import time
from urllib.parse import urlparse

import aiohttp
import pytest

from kuberl.workloads.agentenv.__main__ import parse_args, settings_from
from kuberl.workloads.agentenv.protocol import MiB, advertised_endpoint
from kuberl.workloads.agentenv.server import EnvSettings
from tests.support.agentenv import raw_request_head, read_response, serving


def _port(url: str) -> int:
    return urlparse(url).port


async def _post(s: aiohttp.ClientSession, url: str, **kwargs) -> tuple[int, dict]:
    async with s.post(url, **kwargs) as r:
        return r.status, await r.json(content_type=None)


RESET_CASES = [
    (b"not json", "body"),
    (b"[1, 2]", "body"),
    (b"\xff\xfe", "body"),
    (b"{}", "prompt"),
    (b'{"prompt": "1+1="}', "answer"),
    (b'{"prompt": 5, "answer": "2"}', "prompt"),
    (b'{"prompt": "1+1=", "answer": true}', "answer"),
    (b'{"prompt": "1+1=", "answer": ["2"]}', "answer"),
]


@pytest.mark.parametrize(("body", "field"), RESET_CASES)
async def test_a_bad_reset_body_answers_400_naming_the_field_and_takes_no_slot(body, field):
    async with serving(EnvSettings(concurrency=1)) as (server, url), aiohttp.ClientSession() as s:
        status, answer = await _post(s, f"{url}/episodes", data=body, headers={"Content-Type": "application/json"})
        assert status == 400 and answer["field"] == field and answer["error"]
        assert server.reserved == 0 and not server.episodes and server.counters["rejected"] == 1
        status, _ = await _post(s, f"{url}/episodes", json={"prompt": "1+1=", "answer": 2})  # numbers are answers
        assert status == 200


@pytest.mark.parametrize(("body", "field"), [(b"{}", "action"), (b'{"action": 3}', "action"), (b"nope", "body")])
async def test_a_bad_step_body_answers_400_and_leaves_the_episode_open(body, field):
    async with serving(EnvSettings(task="calculator-tool")) as (server, url), aiohttp.ClientSession() as s:
        _, started = await _post(s, f"{url}/episodes", json={"prompt": "2+3=", "answer": "5"})
        step = f"{url}/episodes/{started['episode_id']}/step"
        status, answer = await _post(s, step, data=body)
        assert status == 400 and answer["field"] == field
        assert await _post(s, step, json={"action": "5"}) == (200, {"observation": "", "reward": 1.0, "done": True})


async def test_a_body_over_the_limit_answers_413_with_or_without_a_length():
    async def chunked(n: int):
        for _ in range(n):
            yield b" " * 65536

    async with serving(EnvSettings(concurrency=1, max_body_bytes=MiB)) as (server, url), aiohttp.ClientSession() as s:
        big = b'{"prompt": "' + b"x" * MiB + b'", "answer": "1"}'
        status, answer = await _post(s, f"{url}/episodes", data=big)
        assert status == 413 and "limit" in answer["error"]
        status, answer = await _post(s, f"{url}/episodes", data=chunked(20))  # 1.25 MiB, no Content-Length
        assert status == 413 and "limit" in answer["error"]
        assert server.reserved == 0 and not server.episodes
        status, _ = await _post(s, f"{url}/episodes", json={"prompt": "y" * 1000, "answer": "1"})
        assert status == 200  # under the limit, and the slot was never lost


async def test_slow_bodies_cannot_admit_more_episodes_than_the_concurrency():
    """Resets whose headers arrived but whose bodies are still coming hold their slots: the
    ones beyond the limit get 429 at once, and when the bodies arrive exactly `concurrency`
    episodes start (checking the count before reading and inserting after let all through)."""
    concurrency, extra = 3, 4
    body = b'{"prompt": "1+1=", "answer": "2"}'
    async with serving(EnvSettings(concurrency=concurrency, body_timeout_s=30)) as (server, url):
        conns = [await raw_request_head(_port(url), "/episodes", len(body),
                                        body[:5]) for _ in range(concurrency + extra)]
        deadline = time.monotonic() + 10
        while server.reserved + server.counters["refused"] < concurrency + extra:
            assert time.monotonic() < deadline, (server.reserved, server.counters)
            await asyncio.sleep(0.02)
        assert server.reserved == concurrency and server.counters["refused"] == extra
        for _, w in conns:  # now the rest of every body
            w.write(body[5:])
        statuses = sorted([(await read_response(r))[0] for r, _ in conns])
        assert statuses == [200] * concurrency + [429] * extra
        assert server.counters["started"] == len(server.episodes) == concurrency and server.reserved == 0
        for _, w in conns:
            w.close()


async def test_a_stalled_body_answers_408_and_frees_its_slot():
    body = b'{"prompt": "1+1=", "answer": "2"}'
    async with serving(EnvSettings(concurrency=1, body_timeout_s=0.5)) as (server, url):
        reader, writer = await raw_request_head(_port(url), "/episodes", len(body), body[:10])
        t0 = time.monotonic()
        status, answer = await read_response(reader, timeout=5)
        assert status == 408 and "did not arrive" in answer["error"]
        assert 0.4 < time.monotonic() - t0 < 3
        assert await reader.read() == b""  # the connection is closed, not kept for the rest of the body
        writer.close()
        assert server.reserved == 0 and server.counters["rejected"] == 1
        async with aiohttp.ClientSession() as s:
            status, _ = await _post(s, f"{url}/episodes", json={"prompt": "1+1=", "answer": "2"})
            assert status == 200  # the only slot is free again


async def test_a_connection_that_never_finishes_its_headers_is_closed():
    async with serving(EnvSettings(idle_timeout_s=0.5)) as (_, url):
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"POST /episodes HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and no blank line, ever
        await writer.drain()
        t0 = time.monotonic()
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        assert time.monotonic() - t0 < 4
        writer.close()


async def test_a_second_step_while_one_runs_is_refused_not_raced():
    settings = EnvSettings(task="calculator-tool", latency="lognormal", latency_median_s=0.5, latency_tail=0.01)
    async with serving(settings) as (_, url), aiohttp.ClientSession() as s:
        _, started = await _post(s, f"{url}/episodes", json={"prompt": "2+3=", "answer": "5"})
        step = f"{url}/episodes/{started['episode_id']}/step"
        first = asyncio.create_task(_post(s, step, json={"action": "c:2+3"}))
        await asyncio.sleep(0.1)
        status, answer = await _post(s, step, json={"action": "5"})
        assert status == 409 and "in progress" in answer["error"]
        assert await first == (200, {"observation": "=5\n", "reward": 0.0, "done": False})


async def test_a_step_is_bounded_by_the_episodes_remaining_time():
    settings = EnvSettings(task="arithmetic", episode_timeout_s=0.3, latency="lognormal", latency_median_s=30,
                           latency_tail=0.01)
    async with serving(settings) as (server, url), aiohttp.ClientSession() as s:
        _, started = await _post(s, f"{url}/episodes", json={"prompt": "1+1=", "answer": "2"})
        t0 = time.monotonic()
        status, answer = await _post(s, f"{url}/episodes/{started['episode_id']}/step", json={"action": "2"})
        assert status == 200 and answer == {"observation": "", "reward": 0.0, "done": True, "timed_out": True}
        assert time.monotonic() - t0 < 2 and server.counters["timed_out"] == 1


# ---- the advertised endpoint ---------------------------------------------------------------


def test_the_advertised_endpoint_comes_from_the_flag_then_the_pod_ip():
    assert advertised_endpoint("http://10.0.0.7:9000/", "10.9.9.9", 8080) == "http://10.0.0.7:9000"
    assert advertised_endpoint(None, "10.1.2.3", 8080) == "http://10.1.2.3:8080"
    assert advertised_endpoint(None, "fd00::12", 8080) == "http://[fd00::12]:8080"
    assert advertised_endpoint(None, None, 8080) is None and advertised_endpoint("", "", 8080) is None
    for bad in ("10.0.0.7:9000", "ftp://x", "http://x/?a=1"):
        with pytest.raises(ValueError, match="advertise-url"):
            advertised_endpoint(bad, None, 8080)
    with pytest.raises(ValueError):
        advertised_endpoint(None, "not-an-ip", 8080)


def test_the_process_reads_pod_ip_and_its_port():
    a = parse_args(["--port", "9100"])
    assert settings_from(a, {"POD_IP": "10.4.0.17"}).endpoint == "http://10.4.0.17:9100"
    assert settings_from(a, {}).endpoint is None
    assert settings_from(argparse.Namespace(**{**vars(a), "advertise_url": "http://me:1"}),
                         {"POD_IP": "10.4.0.17"}).endpoint == "http://me:1"


@pytest.mark.parametrize("endpoint", [None, "http://10.0.0.7:8080"])
async def test_the_reset_answer_carries_the_endpoint_only_when_known(endpoint):
    async with serving(EnvSettings(endpoint=endpoint)) as (_, url), aiohttp.ClientSession() as s:
        _, started = await _post(s, f"{url}/episodes", json={"prompt": "1+1=", "answer": "2"})
        assert started.get("endpoint") == endpoint and ("endpoint" in started) == (endpoint is not None)
