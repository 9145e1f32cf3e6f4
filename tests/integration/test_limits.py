"""Tenants' rate limits over HTTP: OpenAI's 429s and x-ratelimit headers, settled tokens,
concurrent slots, and limits shared by replicas on Redis (and kept when Redis goes)."""

from __future__ import annotations

import asyncio
import math
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import redis_server
from gateway.api.context import RUNTIME
from gateway.app import RunningServer
from gateway.estimate import estimate
from tests.conftest import MODEL, GatewayFactory, SimFactory

BODY = {"model": MODEL, "prompt": "p", "max_tokens": 2}


async def _key(http: aiohttp.ClientSession, gateway: RunningServer, tenant: str) -> str:
    async with http.post(gateway.url + "/admin/keys", json={"tenant": tenant}) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["key"])


async def _post(
    http: aiohttp.ClientSession,
    gateway: RunningServer,
    key: str,
    body: dict[str, Any] | None = None,
    data: bytes | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"Bearer {key}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with http.post(
        gateway.url + "/v1/completions",
        json=None if data is not None else (body or BODY),
        data=data,
        headers=headers,
    ) as answer:
        return answer.status, await answer.json(), dict(answer.headers)


def _tenant(**limits: Any) -> dict[str, Any]:
    return {"acme": {"limits": limits}}


async def test_requests_limit_refuses_with_openai_headers(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(
        [await make_sim()], tenants=_tenant(requests_per_second=2, tokens_per_minute=100_000)
    )
    key = await _key(http, gateway, "acme")
    other = await _key(http, gateway, "free")  # a tenant with no entry: not limited
    status, _, headers = await _post(http, gateway, key)
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "1"
    assert headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(headers["x-ratelimit-remaining-tokens"]) < 100_000
    assert headers["x-ratelimit-reset-requests"].endswith("ms")
    assert (await _post(http, gateway, key))[0] == 200
    status, body, headers = await _post(http, gateway, key)
    assert status == 429
    assert body["error"]["type"] == "requests"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "requests per second" in body["error"]["message"]
    assert headers["Retry-After"] == "1"
    assert 0 < int(headers["retry-after-ms"]) <= 500
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-sluice-reject-reason"] == "rate_limit_requests"
    # An answer that fails before the check carries the tenant's buckets too.
    status, body, headers = await _post(http, gateway, key, data=b"{")
    assert status == 400
    assert headers["x-ratelimit-limit-requests"] == "2"
    # Unlimited tenants get no such headers and no refusal.
    for _ in range(4):
        status, _, headers = await _post(http, gateway, other)
        assert status == 200
        assert not any(h.startswith("x-ratelimit") for h in headers)


async def test_tokens_are_settled_with_what_the_reply_used(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim()], tenants=_tenant(tokens_per_minute=6000))
    key = await _key(http, gateway, "acme")
    # Asks for up to 3000 tokens: the prediction is reserved, the truth (a few) settled.
    body = {**BODY, "max_tokens": 3000}
    status, reply, headers = await _post(http, gateway, key, body)
    assert status == 200
    reserved = 6000 - int(headers["x-ratelimit-remaining-tokens"])
    used = reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"]
    status, _, headers = await _post(http, gateway, key, BODY)
    assert status == 200
    # After the first settled, only its true use (plus what the second reserved) is gone.
    remaining = int(headers["x-ratelimit-remaining-tokens"])
    assert remaining >= 6000 - used - reserved
    # A prompt bigger than a minute's tokens is refused for good: no Retry-After.
    small = await make_gateway([await make_sim()], tenants=_tenant(tokens_per_minute=50))
    small_key = await _key(http, small, "acme")
    status, body_, headers = await _post(http, small, small_key, {**BODY, "prompt": "word " * 400})
    assert (status, body_["error"]["code"], body_["error"]["type"]) == (
        429,
        "request_too_large",
        "tokens",
    )
    assert "Retry-After" not in headers


async def test_concurrency_limit_counts_requests_in_flight(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim()], tenants=_tenant(max_concurrent=1))
    key = await _key(http, gateway, "acme")
    long = {**BODY, "max_tokens": 200, "stream": True}
    headers = {"Authorization": f"Bearer {key}"}
    async with http.post(gateway.url + "/v1/completions", json=long, headers=headers) as first:
        assert first.status == 200
        await first.content.readline()  # streaming: in flight
        status, body, answer = await _post(http, gateway, key)
        assert (status, body["error"]["code"]) == (429, "concurrency_limit_exceeded")
        # When the slot frees, from the latency models: the first request was predicted to
        # take at most what one like it would take now, with it in flight (a bigger batch).
        runtime = gateway.runner.app[RUNTIME]
        services = runtime.services
        size = estimate(long, services.lengths, runtime.config.scheduler.output_quantile)
        now_s = services.fleet.service_time(MODEL, size.prompt_tokens, size.output_tokens)
        assert now_s is not None
        assert 0 < int(answer["retry-after-ms"]) <= now_s * 1000 + 1
        assert answer["Retry-After"] == str(max(1, math.ceil(int(answer["retry-after-ms"]) / 1000)))
        await first.read()
    assert (await _post(http, gateway, key))[0] == 200  # its slot came back when it ended


async def test_limits_are_shared_by_replicas_and_kept_when_redis_goes(
    make_sim: SimFactory,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    sim = await make_sim()
    with redis_server(tmp_path) as url:
        shared = {
            "redis_url": url,
            "redis_prefix": f"l-{uuid.uuid4().hex[:8]}",
            "config_poll_s": 0.2,
            "redis_timeout_s": 0.5,
            "shutdown_grace_s": 2.0,  # Redis is gone by teardown: nothing to wait for
        }
        # A bucket of one request, refilled once every 100 s.
        limits = _tenant(requests_per_second=0.01, max_concurrent=5)
        first = await make_gateway([sim], settings=shared, tenants=limits)
        second = await make_gateway([sim], settings=shared, tenants=limits)
        key = await _key(http, first, "acme")
        await asyncio.sleep(0.5)  # the other replica's key table catches up
        assert (await _post(http, first, key))[0] == 200
        status, body, _ = await _post(http, second, key)
        assert (status, body["error"]["code"]) == (429, "rate_limit_exceeded")
    # Redis is gone: each replica admits on its own book, within its part of the limit.
    results = [(await _post(http, second, key))[0] for _ in range(3)]
    assert results == [200, 429, 429]
