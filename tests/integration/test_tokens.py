"""Prompt tokens counted at each model's own ratio, calibrated against a backend's tokenizer."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bench.sim.server import count_tokens
from gateway.config import BackendConfig, LatencyPrior
from gateway.fleet import Backend, Fleet, make_adapter
from gateway.tokens import DEFAULT_CHARS_PER_TOKEN, TokenScales, calibration_text
from tests.conftest import MODEL, GatewayFactory, SimFactory, eventually


async def test_the_gateway_calibrates_each_model_on_a_backend(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim()])
    text = calibration_text()
    found: dict[str, Any] = {}

    async def calibrated() -> bool:
        async with http.get(gateway.url + "/admin/stats") as response:
            found.update((await response.json())["tokenizers"])
        return MODEL in found

    await eventually(calibrated, what="the model's calibration")
    scale = found[MODEL]
    # The simulator's tokenizer counts words and punctuation marks.
    assert scale["tokens"] == count_tokens(text)
    assert scale["chars_per_token"] == pytest.approx(len(text) / count_tokens(text))
    assert scale["backend"] == "b0"


async def test_a_backend_that_cannot_count_leaves_the_default_and_is_asked_again_later() -> None:
    # A backend whose /tokenize fails until told otherwise, on a real socket.
    calls: list[int] = []
    answer: dict[str, Any] = {"status": 500}

    async def tokenize(request: web.Request) -> web.Response:
        calls.append(1)
        if answer["status"] != 200:
            return web.json_response({"error": "broken"}, status=answer["status"])
        return web.json_response({"count": 4, "tokens": [1, 2, 3, 4]})

    app = web.Application()
    app.router.add_post("/tokenize", tokenize)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    now = [0.0]
    try:
        async with aiohttp.ClientSession() as session:
            config = BackendConfig.model_validate(
                {"name": "b", "url": f"http://127.0.0.1:{port}", "models": ["m"]}
            )
            backend = Backend.create(config, make_adapter(session, config), LatencyPrior())
            backend.healthy = True
            fleet = Fleet([backend], unhealthy_after=2, probe_timeout_s=1.0)
            scales = TokenScales("twenty characters!!!", retry_s=30.0, clock=lambda: now[0])
            await scales.calibrate(fleet)
            assert (len(calls), scales.chars_per_token("m")) == (1, DEFAULT_CHARS_PER_TOKEN)
            answer["status"] = 200
            await scales.calibrate(fleet)  # not asked again before retry_s
            assert (len(calls), scales.scales()) == (1, {})
            now[0] = 31.0
            await scales.calibrate(fleet)
            assert len(calls) == 2
            assert scales.chars_per_token("m") == pytest.approx(20 / 4)
            await scales.calibrate(fleet)  # once calibrated, never asked again
            assert len(calls) == 2
    finally:
        await runner.cleanup()
