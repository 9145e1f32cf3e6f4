"""Hostile input and stalled clients, over real sockets against the gateway on the simulator."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import struct
import time
import traceback
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from gateway.app import RunningServer
from tests.conftest import FAST, MODEL, GatewayFactory, SimFactory, eventually

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETION = {"model": MODEL, "prompt": "p", "max_tokens": 4, "ignore_eos": True}


async def _raw_post(
    http: aiohttp.ClientSession, url: str, data: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Content-Type": "application/json", **(headers or {})}
    async with http.post(url, data=data, headers=headers) as response:
        return response.status, await response.json(), dict(response.headers)


def _error(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("raw", "what"),
    [
        (b'{"model": "sim-model", "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}", "nested"),
        (b'{"model": "sim-model", "prompt": "p", "max_tokens": ' + b"7" * 5000 + b"}", "JSON"),
        (b'{"model": "sim-model", "prompt": "a\\ud800b"}', "surrogate"),
        (b'{"model": "sim-model", "prompt": "a\\udc00b"}', "surrogate"),
        (b'{"model": "sim-model", "prompt": "a\xed\xa0\x80b"}', "UTF-8"),  # CESU-8
        (b'{"model": "sim-model", "prompt": "a\xffb"}', "UTF-8"),
        (b'{"model": "sim-model", "prompt": "p", "temperature": NaN}', "JSON"),
        (b'{"model": "sim-model", "prompt": "p", "top_p": Infinity}', "JSON"),
    ],
)
async def test_hostile_bytes_get_a_400_and_reach_no_backend(
    make_sim: SimFactory,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    raw: bytes,
    what: str,
) -> None:
    sim = await make_sim()
    gateway = await make_gateway([sim])
    status, body, _ = await _raw_post(http, gateway.url + "/v1/completions", raw)
    assert status == 400, body
    assert what in _error(body)["message"]
    assert sim.server.received == []


async def test_a_valid_surrogate_pair_is_text(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim()])
    raw = b'{"model": "sim-model", "prompt": "smile \\ud83d\\ude00", "max_tokens": 2}'
    status, body, _ = await _raw_post(http, gateway.url + "/v1/completions", raw)
    assert status == 200, body


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {**COMPLETION, "temperature": "0.5"}, "temperature"),
        ("/v1/completions", {**COMPLETION, "temperature": -1}, "temperature"),
        ("/v1/completions", {**COMPLETION, "n": 0}, "n"),
        ("/v1/completions", {**COMPLETION, "n": -1}, "n"),
        ("/v1/completions", {**COMPLETION, "n": 2}, "n"),
        ("/v1/completions", {**COMPLETION, "best_of": 3}, "best_of"),
        ("/v1/completions", {**COMPLETION, "prompt": ["a", "b"]}, "prompt"),
        ("/v1/completions", {**COMPLETION, "prompt": 7}, "prompt"),
        ("/v1/completions", {**COMPLETION, "prompt": {"text": "x"}}, "prompt"),
        ("/v1/completions", {**COMPLETION, "max_tokens": True}, "max_tokens"),
        ("/v1/completions", {**COMPLETION, "stream": "yes"}, "stream"),
        ("/v1/completions", {**COMPLETION, "top_p": 0}, "top_p"),
        ("/v1/completions", {**COMPLETION, "min_tokens": 9}, "min_tokens"),
        ("/v1/completions", {**COMPLETION, "stop": 3}, "stop"),
        ("/v1/chat/completions", {**CHAT, "messages": [1, 2]}, "messages.0"),
        ("/v1/chat/completions", {**CHAT, "messages": []}, "messages"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"content": "x"}]}, "messages.0.role"),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "user", "content": 5}]},
            "messages.0.content",
        ),
        ("/v1/chat/completions", {**CHAT, "model": 3}, "model"),
        ("/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": True}}, None),
    ],
)
async def test_bodies_vllm_would_reject_are_refused_before_queueing(
    make_sim: SimFactory,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    path: str,
    body: dict[str, Any],
    param: str | None,
) -> None:
    sim = await make_sim()
    gateway = await make_gateway([sim])
    status, answer, _ = await _raw_post(http, gateway.url + path, json.dumps(body).encode())
    assert status == 400, answer
    error = _error(answer)
    assert error["param"] == (param or "stream_options"), error
    assert sim.server.received == []


async def test_unknown_fields_pass_through(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    gateway = await make_gateway([sim])
    body = {**COMPLETION, "some_engine_extension": {"deep": [1, 2]}, "seed": 3}
    status, answer, _ = await _raw_post(
        http, gateway.url + "/v1/completions", json.dumps(body).encode()
    )
    assert status == 200, answer
    assert sim.server.received[0]["some_engine_extension"] == {"deep": [1, 2]}


async def test_trailing_slash_and_unknown_paths_get_openai_404s(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim()])
    for path in ("/v1/chat/completions/", "/v1/completions/", "/v1/nothing-here"):
        async with http.post(gateway.url + path, json=CHAT) as response:
            assert response.status == 404, path
            assert response.content_type == "application/json"
            _error(await response.json())


async def test_admin_token_with_non_utf8_bytes_is_a_401(
    make_sim: SimFactory, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway([await make_sim()], settings={"admin_token": "s3cret"})
    reader, writer = await _connect(gateway)
    writer.write(
        b"GET /admin/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\x80\r\n"
        b"Connection: close\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), head
    assert b'www-authenticate: bearer realm="sluice"' in head.lower()
    _error(json.loads(payload))


async def test_every_401_says_how_to_authenticate(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim()], settings={"admin_token": "s3cret"})
    async with http.get(gateway.url + "/admin/stats") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="sluice"'
        assert _error(await response.json())["type"] == "authentication_error"


# --- stalled and slow clients ---------------------------------------------------------------


async def _connect(gateway: RunningServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address = urlsplit(gateway.url)
    assert address.hostname is not None
    assert address.port is not None
    return await asyncio.open_connection(address.hostname, address.port)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the gateway sent before it closed the connection; fails if it stays open."""
    return await asyncio.wait_for(reader.read(), timeout=seconds)


TIGHT = {"header_timeout_s": 0.3, "body_timeout_s": 0.3, "keepalive_timeout_s": 0.5}


async def test_partial_headers_are_cut_with_a_408(
    make_sim: SimFactory, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway([await make_sim()], settings=TIGHT)
    reader, writer = await _connect(gateway)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
    answer = await _closed_within(reader, 5)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    writer.close()


async def test_a_connection_that_sends_nothing_is_closed(
    make_sim: SimFactory, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway([await make_sim()], settings=TIGHT)
    reader, writer = await _connect(gateway)
    await _closed_within(reader, 5)
    writer.close()


async def test_a_half_sent_body_is_a_408(
    make_sim: SimFactory, make_gateway: GatewayFactory
) -> None:
    sim = await make_sim()
    gateway = await make_gateway([sim], settings=TIGHT)
    reader, writer = await _connect(gateway)
    body = json.dumps(COMPLETION).encode()
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10]
    )
    answer = await _closed_within(reader, 5)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert _error(json.loads(payload))["code"] == "request_timeout"
    assert sim.server.received == []
    writer.close()


async def test_an_idle_keepalive_connection_is_closed(
    make_sim: SimFactory, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway([await make_sim()], settings=TIGHT)
    reader, writer = await _connect(gateway)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    assert first.startswith(b"HTTP/1.1 200")
    # Kept alive after the answer, then closed once idle for the keep-alive bound.
    await _closed_within(reader, 5)
    writer.close()


async def test_connections_past_the_cap_get_a_503(
    make_sim: SimFactory, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway([await make_sim()], settings={"max_connections": 3})
    held = [await _connect(gateway) for _ in range(3)]
    reader, writer = await _connect(gateway)
    answer = await _closed_within(reader, 5)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), head
    assert _error(json.loads(payload))["code"] == "too_many_connections"
    writer.close()
    for _, w in held:
        w.close()
    # Once those are gone, connections are taken again.
    await asyncio.sleep(0.1)
    async with (
        aiohttp.ClientSession() as http,
        http.get(gateway.url + "/health") as response,
    ):
        assert response.status == 200


async def test_a_client_that_stops_reading_is_cut_and_its_slot_freed(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(dataclasses.replace(FAST.scaled(0.01), max_model_len=100_000))
    gateway = await make_gateway([sim], settings={"send_timeout_s": 0.5})
    _reader, writer = await _connect(gateway)
    body = json.dumps({**COMPLETION, "max_tokens": 60_000, "stream": True}).encode()
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await writer.drain()  # and never read a byte of the answer

    async def freed() -> bool:
        async with http.get(gateway.url + "/metrics") as response:
            text = await response.text()
        lines = [x for x in text.splitlines() if x.startswith("sluice_backend_in_flight")]
        cancelled = 'outcome="cancelled"' in text
        return cancelled and all(line.endswith(" 0.0") for line in lines)

    await eventually(freed, within_s=30, what="the stalled stream's slot given back")
    writer.close()


# --- requests that can never run ----------------------------------------------------------


async def test_a_prompt_no_backend_can_hold_is_refused_at_once(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(dataclasses.replace(FAST, max_model_len=4096))
    gateway = await make_gateway([sim])
    huge = {**COMPLETION, "prompt": "word " * 40_000}  # 200 kB: at least 25,000 tokens
    status, body, _ = await _raw_post(
        http,
        gateway.url + "/v1/completions",
        json.dumps(huge).encode(),
        headers={"x-slo-class": "batch"},
    )
    assert status == 400
    assert _error(body)["code"] == "context_length_exceeded"
    too_long_reply = {**COMPLETION, "max_tokens": 5000}
    status, body, _ = await _raw_post(
        http, gateway.url + "/v1/completions", json.dumps(too_long_reply).encode()
    )
    assert (status, _error(body)["param"]) == (400, "max_tokens")
    assert sim.server.received == []


async def test_a_request_no_cache_can_hold_does_not_hold_up_the_queue(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    # The gateway reserves prompt + predicted reply in a 3,000-token cache: a 12,000-character
    # prompt (3,000 tokens by its count) with its reply never fits, a small one does.
    gateway = await make_gateway(
        [sim], backends=[{"name": "b0", "url": sim.url, "kv_capacity_tokens": 3000}]
    )
    url = gateway.url + "/v1/completions"
    long_stream = asyncio.create_task(
        _raw_post(http, url, json.dumps({**COMPLETION, "max_tokens": 2000}).encode())
    )
    await eventually(lambda: _true(len(sim.server.received) == 1), what="the first dispatched")
    big = {**COMPLETION, "prompt": "x" * 12_000, "max_tokens": 400}
    # The first's length is known (ignore_eos): a budget long enough to wait for it to end.
    patient = {"x-slo-ttft-ms": "60000", "x-slo-tpot-ms": "1000"}
    waiting = asyncio.create_task(_raw_post(http, url, json.dumps(big).encode(), patient))
    await asyncio.sleep(0.05)
    small = await _raw_post(http, url, json.dumps(COMPLETION).encode())
    assert small[0] == 200
    assert not long_stream.done()  # the small one went past while the backend was busy
    assert not waiting.done()  # the big one waits for an idle backend
    assert (await long_stream)[0] == 200
    assert (await waiting)[0] == 200  # alone on the idle backend, whose engine took it


async def _true(value: bool) -> bool:
    return value


# --- a backend that fails mid-stream ----------------------------------------------------


async def _backends(http: aiohttp.ClientSession, gateway: RunningServer) -> dict[str, Any]:
    async with http.get(gateway.url + "/admin/backends") as response:
        rows = (await response.json())["backends"]
    return {row["name"]: row for row in rows}


async def _stream(http: aiohttp.ClientSession, gateway: RunningServer) -> tuple[str, bytes]:
    body = {**COMPLETION, "max_tokens": 10, "stream": True}
    async with http.post(gateway.url + "/v1/completions", json=body) as response:
        assert response.status == 200
        return response.headers["x-sluice-backend"], await response.read()


async def test_a_backend_that_breaks_its_streams_is_ejected_and_probed_back(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sick, well = await make_sim(), await make_sim()
    # Least-loaded placement, ties by name: each request goes to b0 while it is in.
    gateway = await make_gateway(
        [sick, well],
        settings={"eject_after": 2, "eject_base_s": 1.0, "probe_interval_s": 60},
        scheduler={"policy": "least_loaded"},
    )
    sick.server.faults.reset_streams = 1000
    sick.server.faults.reset_after_tokens = 2
    broken = 0
    for _ in range(8):
        backend, payload = await _stream(http, gateway)
        if backend == "b0":
            broken += 1
            assert b"upstream_stream_broken" in payload
            assert b"Error" not in payload
            assert b"aiohttp" not in payload
    assert broken == 2  # then it was out: the rest went to b1
    row = (await _backends(http, gateway))["b0"]
    assert row["healthy"]
    assert not row["routable"]
    assert row["outlier"]["ejected"]
    assert "2 failed responses" in row["outlier"]["reason"]
    async with http.get(gateway.url + "/metrics") as response:
        text = await response.text()
    assert 'sluice_backend_ejected{backend="b0"} 1.0' in text
    assert 'sluice_backend_ejections_total{backend="b0"} 1.0' in text

    async def back() -> bool:
        return bool((await _backends(http, gateway))["b0"]["routable"])

    await eventually(back, within_s=10, what="b0 probed back in after its ejection")
    # Still sick: ejected again, for longer (two base lengths).
    while (await _backends(http, gateway))["b0"]["routable"]:
        await _stream(http, gateway)
    outlier = (await _backends(http, gateway))["b0"]["outlier"]
    assert outlier["ejections"] == 2
    assert outlier["ejected_for_s"] > 1.0


async def test_at_most_half_the_fleet_is_ejected(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a, b = await make_sim(), await make_sim()
    gateway = await make_gateway(
        [a, b],
        settings={"eject_after": 1, "eject_base_s": 30.0},
        scheduler={"policy": "least_loaded"},
    )
    for sim in (a, b):
        sim.server.faults.reset_streams = 1000
        sim.server.faults.reset_after_tokens = 1
    for _ in range(6):
        await _stream(http, gateway)
    rows = await _backends(http, gateway)
    assert sorted(r["outlier"]["ejected"] for r in rows.values()) == [False, True]


# --- a frozen Redis ------------------------------------------------------------------------


async def test_a_frozen_redis_does_not_slow_requests(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    import os
    import signal

    from bench.procs import free_port, start_redis

    port = free_port()
    redis = start_redis(tmp_path / "frozen", port)
    try:
        sim = await make_sim(FAST.scaled(0.05))
        timeout_s = 1.0
        gateway = await make_gateway(
            [sim],
            settings={
                "redis_url": f"redis://127.0.0.1:{port}/0",
                "redis_prefix": "frozen",
                "redis_timeout_s": timeout_s,
            },
        )
        url = gateway.url + "/v1/completions"
        assert (await _raw_post(http, url, json.dumps(COMPLETION).encode()))[0] == 200
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            took = []
            for _ in range(20):
                start = time.monotonic()
                status, _, _ = await _raw_post(http, url, json.dumps(COMPLETION).encode())
                took.append(time.monotonic() - start)
                assert status == 200
            text = await (await http.get(gateway.url + "/metrics")).text()
            assert "sluice_shared_state_up 0.0" in text
            # The first call waited out its bound and opened the breaker; the others did not
            # wait on Redis at all (each is far below the bound).
            assert sum(t >= timeout_s for t in took) <= 2, took
            assert sorted(took)[len(took) // 2] < timeout_s / 2, took
        finally:
            os.kill(redis.pid, signal.SIGCONT)

        async def up_again() -> bool:
            text = await (await http.get(gateway.url + "/metrics")).text()
            return "sluice_shared_state_up 1.0" in text

        await eventually(up_again, within_s=10, what="the breaker closed once Redis answers")
        assert (await _raw_post(http, url, json.dumps(COMPLETION).encode()))[0] == 200
    finally:
        redis.terminate()
        redis.wait(timeout=10)


# --- clients that go away --------------------------------------------------------------


async def test_clients_gone_before_their_answer_are_ordinary_events(
    make_sim: SimFactory,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = await make_sim(FAST.scaled(20))  # slow enough that every client leaves first
    gateway = await make_gateway([sim])
    body = json.dumps({**COMPLETION, "max_tokens": 50, "stream": True}).encode()
    request = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with caplog.at_level("INFO"):
        for i in range(20):
            _, writer = await _connect(gateway)
            writer.write(request)
            await writer.drain()
            await asyncio.sleep(0.01 * (i % 5))  # some leave while queued, some mid-dispatch
            sock = writer.get_extra_info("socket")
            # Half of them reset the connection (RST) rather than closing it (FIN).
            if i % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
        await asyncio.sleep(0.5)

        async def idle() -> bool:
            async with http.get(gateway.url + "/metrics") as response:
                text = await response.text()
            return 'sluice_backend_in_flight{backend="b0"} 0.0' in text

        await eventually(idle, within_s=20, what="every abandoned request's slot given back")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and not _simulator(r)]
    assert errors == [], [r.getMessage() for r in errors]


def _simulator(record: logging.LogRecord) -> bool:
    """A record of the simulated backend, which runs in this process too."""
    text = "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else ""
    return "bench/sim/" in text
