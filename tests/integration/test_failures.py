"""Every failure path of the proxy, against real servers that really fail."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aiohttp
import openai
import pytest

from bench.sim.fleet import RunningSim
from tests.conftest import (
    FAST,
    MODEL,
    GatewayFactory,
    SimFactory,
    eventually,
    metric_sum,
    openai_client,
)

BODY = {"model": MODEL, "prompt": "p", "max_tokens": 4, "ignore_eos": True}


async def _post(
    http: aiohttp.ClientSession, url: str, body: Any = BODY, **kwargs: Any
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = body if isinstance(body, bytes) else None
    json_body = None if isinstance(body, bytes) else body
    async with http.post(url, data=data, json=json_body, **kwargs) as response:
        return response.status, await response.json(), dict(response.headers)


def _assert_openai_error(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


async def test_refused_backend_is_retried_on_another(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    dead, alive = await make_sim(), await make_sim()
    gateway = await make_gateway([dead, alive])
    await dead.stop()  # still healthy in the gateway's eyes: the next probe is a minute away
    for _ in range(2):
        status, body, headers = await _post(http, gateway.url + "/v1/completions")
        assert status == 200, body
        assert headers["x-sluice-backend"] == "b1"
    # The first request found b0 dead and retried; the second was not sent there at all.
    assert await metric_sum(http, gateway.url, "sluice_upstream_retries_total") == 1
    assert len(alive.server.received) == 2


async def test_reset_before_headers_is_retried(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a, b = await make_sim(), await make_sim()
    gateway = await make_gateway([a, b])
    a.server.faults.reset_before_headers = 1
    b.server.faults.reset_before_headers = 1
    # Least loaded with a tie goes to b0 first; it resets, b1 is tried and resets too.
    status, body, _ = await _post(http, gateway.url + "/v1/completions")
    assert status == 502
    assert _assert_openai_error(body)["type"] == "upstream_error"


async def test_one_reset_then_success(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a, b = await make_sim(), await make_sim()
    gateway = await make_gateway([a, b])
    a.server.faults.reset_before_headers = 1
    status, _, headers = await _post(http, gateway.url + "/v1/completions")
    assert status == 200
    assert headers["x-sluice-backend"] == "b1"


async def test_only_backend_refuses(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    gateway = await make_gateway([sim])
    await sim.stop()
    status, body, _ = await _post(http, gateway.url + "/v1/completions")
    assert status == 502
    assert "no other backend" in _assert_openai_error(body)["message"]
    # Now the gateway knows it is down: the next request is refused at once.
    status, body, headers = await _post(http, gateway.url + "/v1/completions")
    assert status == 503
    assert _assert_openai_error(body)["code"] == "no_backend_available"
    assert headers["Retry-After"] == "1"


async def test_no_healthy_backend_at_start(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    await sim.stop()
    gateway = await make_gateway(
        [sim],
        models=[{"name": MODEL}],
        backends=[{"name": "b0", "url": sim.url, "models": [MODEL]}],
    )
    status, body, _ = await _post(http, gateway.url + "/v1/completions")
    assert status == 503
    _assert_openai_error(body)
    async with http.get(gateway.url + "/ready") as response:
        assert response.status == 503


async def test_mid_stream_failure_ends_with_an_error_event(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    gateway = await make_gateway([sim])
    sim.server.faults.reset_streams = 1
    sim.server.faults.reset_after_tokens = 3
    client = openai_client(gateway)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "x"}],
        max_tokens=20,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    received: list[str] = []

    async def consume() -> None:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)

    with pytest.raises(openai.APIError, match="mid-stream"):
        await consume()
    assert len(received) == 3
    await client.close()
    failed = await metric_sum(
        http, gateway.url, 'sluice_requests_total{model="sim-model",outcome="failed"'
    )
    assert failed == 1


async def _wait_aborted(sim: RunningSim) -> None:
    async def aborted() -> bool:
        engine = sim.server.engine
        return engine.counters.aborted == 1 and not engine.running and not engine.waiting

    await eventually(aborted, what="upstream request aborted")


async def test_client_disconnect_mid_stream_cancels_upstream(
    make_sim: SimFactory, make_gateway: GatewayFactory
) -> None:
    sim = await make_sim(FAST.scaled(5))
    gateway = await make_gateway([sim])
    async with aiohttp.ClientSession() as client:
        response = await client.post(
            gateway.url + "/v1/completions",
            json={**BODY, "max_tokens": 2000, "stream": True},
        )
        await response.content.readany()
        response.close()
    await _wait_aborted(sim)
    runtime_fleet_in_flight = await _gateway_in_flight(gateway.url)
    assert runtime_fleet_in_flight == 0
    assert sim.server.engine.counters.finished == 0


async def test_client_disconnect_while_waiting_for_a_full_reply(
    make_sim: SimFactory, make_gateway: GatewayFactory
) -> None:
    sim = await make_sim(FAST.scaled(5))
    gateway = await make_gateway([sim])
    async with aiohttp.ClientSession() as client:
        task = asyncio.create_task(
            client.post(gateway.url + "/v1/completions", json={**BODY, "max_tokens": 2000})
        )

        async def running() -> bool:
            return len(sim.server.engine.running) == 1

        await eventually(running, what="request running upstream")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await _wait_aborted(sim)
    assert await _gateway_in_flight(gateway.url) == 0


async def _gateway_in_flight(url: str) -> float:
    async with aiohttp.ClientSession() as http:
        return await metric_sum(http, url, "sluice_backend_in_flight")


async def test_first_byte_timeout_is_504(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(FAST.scaled(500))  # ~0.6 s a step
    gateway = await make_gateway([sim], settings={"first_byte_timeout_s": 0.2})
    status, body, _ = await _post(http, gateway.url + "/v1/completions")
    assert status == 504
    assert _assert_openai_error(body)["type"] == "upstream_timeout"
    await _wait_aborted(sim)


async def test_idle_stream_timeout_ends_with_an_error_event(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(FAST.scaled(500))
    gateway = await make_gateway([sim], settings={"idle_timeout_s": 0.2})
    async with http.post(
        gateway.url + "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
            "max_tokens": 5,
        },
    ) as response:
        assert response.status == 200
        text = await response.text()
    # The answer started (200 and its headers), then nothing came within the idle bound (as
    # vLLM, the simulator sends its first chunk with the first token, after a 0.6 s step).
    events = [e for e in text.split("\n\n") if e]
    assert events[-1].startswith('data: {"error"')
    assert "[DONE]" not in text
    await _wait_aborted(sim)


async def test_queue_timeout_is_503(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(FAST.scaled(50))
    gateway = await make_gateway(
        [sim],
        settings={"queue_timeout_s": 0.1},
        backends=[{"name": "b0", "url": sim.url, "max_in_flight": 1}],
    )
    first = asyncio.create_task(
        _post(http, gateway.url + "/v1/completions", {**BODY, "max_tokens": 50})
    )
    await eventually(lambda: _true_if(len(sim.server.engine.running) == 1))
    status, body, headers = await _post(http, gateway.url + "/v1/completions")
    assert status == 503
    assert "within 0.1s" in _assert_openai_error(body)["message"]
    assert "Retry-After" in headers
    assert (await first)[0] == 200


async def _true_if(value: bool) -> bool:
    return value


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "param"),
    [
        ("/v1/completions", b"{not json", {}, 400, None),
        ("/v1/completions", b"[1, 2]", {}, 400, None),
        ("/v1/completions", b"\xff\xfe", {}, 400, None),
        ("/v1/completions", {"prompt": "x"}, {}, 400, "model"),
        ("/v1/completions", {"model": 5, "prompt": "x"}, {}, 400, "model"),
        ("/v1/completions", {"model": MODEL}, {}, 400, "prompt"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, {}, 400, "messages"),
        ("/v1/completions", {**BODY, "stream": "yes"}, {}, 400, "stream"),
        ("/v1/completions", {**BODY, "max_tokens": -1}, {}, 400, "max_tokens"),
        (
            "/v1/completions",
            {**BODY, "stream_options": {"include_usage": True}},
            {},
            400,
            "stream_options",
        ),
        ("/v1/completions", {**BODY, "model": "nope"}, {}, 404, "model"),
        (
            "/v1/chat/completions",
            {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
            {},
            404,
            "model",
        ),
        ("/v1/completions", BODY, {"x-slo-ttft-ms": "fast"}, 400, "x-slo-ttft-ms"),
        ("/v1/completions", BODY, {"x-slo-tpot-ms": "-3"}, 400, "x-slo-tpot-ms"),
        ("/v1/completions", BODY, {"x-slo-class": "platinum"}, 400, "x-slo-class"),
        ("/v1/completions", {**BODY, "prompt": "x" * 5_000}, {}, 413, None),
    ],
)
async def test_bad_requests(
    make_sim: SimFactory,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    path: str,
    body: Any,
    headers: dict[str, str],
    status: int,
    param: str | None,
) -> None:
    sim = await make_sim()
    gateway = await make_gateway([sim], settings={"max_body_bytes": 4096})
    got, answer, _ = await _post(http, gateway.url + path, body, headers=headers)
    assert got == status, answer
    assert _assert_openai_error(answer)["param"] == param
    assert sim.server.received == []


async def test_unknown_route_and_method(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim()])
    async with http.get(gateway.url + "/nope") as response:
        assert response.status == 404
        _assert_openai_error(await response.json())
    async with http.get(gateway.url + "/v1/completions") as response:
        assert response.status == 405
        _assert_openai_error(await response.json())


async def test_backend_errors_pass_through_unchanged(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(dataclasses.replace(FAST, max_model_len=4096))
    gateway = await make_gateway([sim])
    # 5,000 words: the gateway counts them low (1,250 tokens at least) and lets the engine,
    # which counts 5,000, decide.
    long_prompt = {**BODY, "prompt": "a " * 5000}
    status, body, _ = await _post(http, gateway.url + "/v1/completions", long_prompt)
    assert status == 400
    assert body["error"]["type"] == "BadRequestError"
    assert "maximum context length" in body["error"]["message"]
    # The backend is still fine and the slot was given back.
    status, _, _ = await _post(http, gateway.url + "/v1/completions")
    assert status == 200
    assert await _gateway_in_flight(gateway.url) == 0


async def test_backend_busy_503_passes_through(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(FAST.scaled(50), max_queued=0)
    gateway = await make_gateway([sim])
    status, body, _ = await _post(http, gateway.url + "/v1/completions")
    assert status == 503
    assert "busy" in body["error"]["message"]
