"""Gateway replicas as separate processes on one Redis: together they keep a backend within
what one gateway would admit, and they keep serving through a Redis crash and restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.procs import free_port, gateway, start_redis
from bench.sim.fleet import RunningSim
from gateway.config import GatewayConfig
from gateway.estimate import estimate
from gateway.state.redis_store import RedisStore
from predictor import artifact
from tests.conftest import MODEL, SimFactory

PROMPT = "Write a short note about rivers."
MAX_TOKENS = 40
BOUND = 4  # requests the backend's KV capacity admits, set below


def _config(sim: RunningSim, kv_capacity: int) -> dict[str, Any]:
    return {
        "slo_classes": {"relaxed": {"ttft_ms": 60_000, "tpot_ms": 1000}},
        "default_class": "relaxed",
        "backends": [
            {
                "name": "b0",
                "url": sim.url,
                "max_in_flight": 100,
                "kv_capacity_tokens": kv_capacity,
            }
        ],
    }


def _reserve() -> int:
    """The KV tokens the gateway reserves for one request of PROMPT (prompt + p90 output)."""
    model = artifact.load(artifact.PACKAGED).model
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS}
    quantile = GatewayConfig().scheduler.output_quantile
    expected = estimate(body, model, quantile)
    return expected.prompt_tokens + expected.output_reserve


async def _stream(http: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    """One streamed completion; returns (status, chunks with text)."""
    body = {
        "model": MODEL,
        "prompt": PROMPT,
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "stream": True,
    }
    chunks = 0
    async with http.post(url + "/v1/completions", json=body) as response:
        async for line in response.content:
            text = line.decode().strip()
            if text.startswith("data: {"):
                event = json.loads(text[6:])
                chunks += bool(event.get("choices") and event["choices"][0].get("text"))
        return response.status, chunks


async def _gateways(
    stack: contextlib.AsyncExitStack,
    count: int,
    config: dict[str, Any],
    env: dict[str, str],
    tmp_path: Path,
) -> list[str]:
    """Start ``count`` gateway processes, each in a folder of its own; stopped with ``stack``."""
    urls = []
    for i in range(count):
        folder = tmp_path / f"gw{i}"
        folder.mkdir()
        urls.append(await stack.enter_async_context(gateway(config, folder, env=env)))
    return urls


async def _peak_while(sim: RunningSim, work: asyncio.Future[Any]) -> int:
    """The most requests the backend held at once while ``work`` ran."""
    peak = 0
    engine = sim.server.engine
    while not work.done():
        peak = max(peak, len(engine.running) + len(engine.waiting))
        await asyncio.sleep(0.001)
    return peak


@pytest.mark.parametrize("shared", [True, False], ids=["one-redis", "no-redis"])
async def test_gateway_processes_keep_a_backend_within_its_kv_admission(
    make_sim: SimFactory, redis_url: str, tmp_path: Path, shared: bool
) -> None:
    sim = await make_sim()
    reserve = _reserve()
    config = _config(sim, kv_capacity=BOUND * reserve + reserve // 2)
    env = {**os.environ, "SLUICE_SHARED_SYNC_S": "0.05"}
    if shared:
        env |= {"SLUICE_REDIS_URL": redis_url, "SLUICE_REDIS_PREFIX": uuid.uuid4().hex}
    async with contextlib.AsyncExitStack() as stack:
        urls = await _gateways(stack, 3, config, env, tmp_path)
        async with aiohttp.ClientSession() as http:
            work = asyncio.ensure_future(
                asyncio.gather(*(_stream(http, urls[i % 3]) for i in range(24)))
            )
            peak = await _peak_while(sim, work)
            results = await work
    assert results == [(200, MAX_TOKENS)] * 24
    if shared:
        # Each replica alone admits BOUND; together, on one Redis, still BOUND.
        assert peak == BOUND
    else:
        assert peak > BOUND  # the contrast: three gateways with their own accounting


async def test_serving_goes_on_while_redis_is_killed_and_restarted(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    """Two gateway processes under a steady load; redis-server is killed (SIGKILL), stays
    away, and comes back empty. No request fails, and the replicas register their in-flight
    leases again in the new Redis and release them all once the load stops."""
    sim = await make_sim()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    prefix = uuid.uuid4().hex
    env = {
        **os.environ,
        "SLUICE_REDIS_URL": url,
        "SLUICE_REDIS_PREFIX": prefix,
        "SLUICE_SHARED_SYNC_S": "0.1",
        "SLUICE_CONFIG_POLL_S": "0.1",
    }
    config = _config(sim, kv_capacity=1_000_000)
    redis_proc = await asyncio.to_thread(start_redis, tmp_path / "redis-1", port)
    store = RedisStore(url, prefix=prefix)
    try:
        async with contextlib.AsyncExitStack() as stack:
            urls = await _gateways(stack, 2, config, env, tmp_path)
            results: list[tuple[int, int]] = []
            stop = time.monotonic() + 6.0

            async def worker(n: int, http: aiohttp.ClientSession) -> None:
                while time.monotonic() < stop:
                    results.append(await _stream(http, urls[n % 2]))

            async with aiohttp.ClientSession() as http:
                load = asyncio.gather(*(worker(n, http) for n in range(6)))
                await asyncio.sleep(1.5)
                served_before = len(results)
                redis_proc.kill()
                await asyncio.to_thread(redis_proc.wait)
                await asyncio.sleep(1.5)
                served_during = len(results) - served_before
                redis_proc = await asyncio.to_thread(start_redis, tmp_path / "redis-2", port)
                seen = []
                for _ in range(20):  # while the load runs on, leases come back
                    await asyncio.sleep(0.1)
                    with contextlib.suppress(Exception):
                        seen.append((await store.load_totals("b0")).count)
                await load
            assert served_before > 0
            assert served_during > 0  # it served while Redis was away
            assert results == [(200, MAX_TOKENS)] * len(results)  # and no request failed
            assert max(seen) >= 1  # in-flight leases registered again in the new Redis
            async with (
                aiohttp.ClientSession() as http,
                http.get(urls[0] + "/admin/config") as response,
            ):
                assert response.status == 200
                assert response.headers["ETag"] != '"0"'  # the config was given back
            deadline = time.monotonic() + 5
            while (await store.load_totals("b0")).count:
                assert time.monotonic() < deadline, "leases left behind after the load"
                await asyncio.sleep(0.05)
            current = await store.get_config()
            assert current is not None
            assert "relaxed" in current.payload
    finally:
        await store.close()
        redis_proc.kill()
        await asyncio.to_thread(redis_proc.wait)
