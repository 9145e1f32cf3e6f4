"""Liveness, readiness, metrics and health probing."""

from __future__ import annotations

import aiohttp

from bench.sim.fleet import start_sim
from bench.sim.server import SimServer
from tests.conftest import FAST, MODEL, GatewayFactory, SimFactory, eventually


async def test_health_ready_metrics(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    gateway = await make_gateway([sim])
    async with http.get(gateway.url + "/health") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}
    async with http.get(gateway.url + "/ready") as response:
        assert response.status == 200
        assert (await response.json())["healthy_backends"] == ["b0"]
    async with http.post(
        gateway.url + "/v1/completions",
        json={"model": MODEL, "prompt": "x", "max_tokens": 3, "stream": True},
        headers={"x-slo-class": "interactive"},
    ) as response:
        await response.read()
    async with http.get(gateway.url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    for name in (
        'sluice_requests_total{model="sim-model",outcome="ok",slo_class="interactive"} 1.0',
        'sluice_ttft_seconds_count{model="sim-model",slo_class="interactive"} 1.0',
        'sluice_backend_healthy{backend="b0"} 1.0',
        'sluice_backend_in_flight{backend="b0"} 0.0',
        'sluice_backend_engine_running{backend="b0"} 0.0',
        'sluice_backend_kv_usage{backend="b0"} 0.0',
    ):
        assert name in text, name


async def test_probes_track_backend_health(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    gateway = await make_gateway(
        [sim], settings={"probe_interval_s": 0.05, "unhealthy_after": 2, "probe_timeout_s": 0.5}
    )
    port = sim.port
    await sim.stop()

    async def not_ready() -> bool:
        async with http.get(gateway.url + "/ready") as response:
            return response.status == 503

    await eventually(not_ready, what="gateway noticing the dead backend")
    async with http.get(gateway.url + "/v1/models") as response:
        assert (await response.json())["data"] == []

    # A server coming back on the same address is picked up again.
    revived = await start_sim(SimServer(FAST, model=MODEL), port=port)
    try:

        async def ready() -> bool:
            async with http.get(gateway.url + "/ready") as response:
                return response.status == 200

        await eventually(ready, what="gateway noticing the revived backend")
    finally:
        await revived.stop()
