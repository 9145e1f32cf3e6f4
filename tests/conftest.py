"""Fixtures: simulated vLLM servers and gateways, all real HTTP servers on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI

from bench.procs import redis_server
from bench.sim.fleet import RunningSim, start_sim
from bench.sim.profiles import Profile, get_profile
from bench.sim.server import SimServer
from gateway.app import RunningServer, build_app, start_server
from gateway.config import GatewayConfig
from gateway.settings import Settings
from tests import interpreter

interpreter.install()

MODEL = "sim-model"
# The 8B-on-H100 engine at a fifth of its step time: streams are real, tests stay quick.
FAST = get_profile("llama8b-h100").scaled(0.2)

SimFactory = Callable[..., Awaitable[RunningSim]]
GatewayFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    started: list[RunningSim] = []

    async def factory(profile: Profile = FAST, **kwargs: Any) -> RunningSim:
        kwargs.setdefault("model", MODEL)
        sim = await start_sim(SimServer(profile, seed=len(started), **kwargs))
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        await sim.stop()


def gateway_config(sims: list[RunningSim], **overrides: Any) -> GatewayConfig:
    raw: dict[str, Any] = {
        "slo_classes": {
            "interactive": {"ttft_ms": 500, "tpot_ms": 50},
            "batch": {"ttft_ms": 5000, "tpot_ms": 200},
        },
        "default_class": "batch",
        "backends": [{"name": f"b{i}", "url": sim.url} for i, sim in enumerate(sims)],
    }
    raw.update(overrides)
    return GatewayConfig.model_validate(raw)


@pytest.fixture
async def make_gateway() -> AsyncIterator[GatewayFactory]:
    started: list[RunningServer] = []

    async def factory(
        sims: list[RunningSim], settings: dict[str, Any] | None = None, **config: Any
    ) -> RunningServer:
        # Several gateways share this test's event loop on a busy machine: a Redis call bound
        # of 2 s keeps a stall of the loop from opening the circuit breaker (and so from
        # admitting on local accounting) in tests of something else; the breaker's own test
        # sets its bound.
        options: dict[str, Any] = {"probe_interval_s": 60.0, "port": 0, "redis_timeout_s": 2.0}
        options.update(settings or {})
        server = await start_server(
            build_app(Settings(**options), gateway_config(sims, **config)), "127.0.0.1", 0
        )
        started.append(server)
        return server

    yield factory
    for server in started:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def request_json(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    """One call with a JSON body (or none): its status and its JSON answer."""
    async with http.request(method, url, json=body) as response:
        return response.status, await response.json()


async def metric_sum(http: aiohttp.ClientSession, url: str, prefix: str) -> float:
    """The sum of the /metrics samples whose line starts with ``prefix``."""
    async with http.get(url + "/metrics") as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def openai_client(gateway: RunningServer, **headers: str) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key="unused", max_retries=0, default_headers=headers
    )


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within_s: float = 10.0, what: str = "condition"
) -> None:
    """Poll until ``check`` holds; fail the test if it never does."""
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not hold within {within_s}s")
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the test module's own; tests keep apart by key prefix."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url
