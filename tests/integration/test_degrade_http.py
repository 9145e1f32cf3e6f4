"""Degrading to a model's variant through the gateway, against simulated vLLM servers: the
variant serves under its own name, the reply says so, and every degraded request is counted."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests.conftest import MODEL, GatewayFactory, SimFactory

VARIANT = "sim-model-awq"
CLASSES = {
    "flexible": {"ttft_ms": 5000, "tpot_ms": 50, "degrade": "when_unattainable"},
    "strict": {"ttft_ms": 5000, "tpot_ms": 50},
    "eager": {"ttft_ms": 5000, "tpot_ms": 50, "degrade": "prefer_fast"},
}
SLOW = {"itl_d_ms": 200.0}  # the full pool's prior: 200 ms a token, no 50 ms target is met
MODELS = [{"name": MODEL, "variants": [{"model": VARIANT}]}]


async def _fleet(
    make_sim: SimFactory, make_gateway: GatewayFactory, full_prior: dict[str, float] | None
) -> tuple[Any, Any, Any]:
    full, variant = await make_sim(), await make_sim(model=VARIANT)
    gateway = await make_gateway(
        [full, variant],
        slo_classes=CLASSES,
        default_class="strict",
        models=MODELS,
        backends=[
            {"name": "full", "url": full.url, "models": [MODEL], "latency_prior": full_prior},
            {"name": "awq", "url": variant.url, "models": [VARIANT]},
        ],
    )
    return full, variant, gateway


async def _post(
    http: aiohttp.ClientSession, url: str, slo_class: str, *, stream: bool = False
) -> tuple[int, str, dict[str, str]]:
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 8, "stream": stream}
    headers = {"x-slo-class": slo_class}
    async with http.post(url + "/v1/completions", json=body, headers=headers) as response:
        return response.status, await response.text(), dict(response.headers)


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unattainable_request_is_served_by_the_variant_and_says_so(
    make_sim: SimFactory,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    stream: bool,
) -> None:
    full, variant, gateway = await _fleet(make_sim, make_gateway, SLOW)
    status, text, headers = await _post(http, gateway.url, "flexible", stream=stream)
    assert status == 200, text
    assert headers["x-sluice-served-model"] == VARIANT
    assert headers["x-sluice-backend"] == "awq"
    if stream:
        chunks = [
            json.loads(line.removeprefix("data: "))
            for line in text.splitlines()
            if line.startswith("data: {")
        ]
        assert chunks
        assert {c["model"] for c in chunks} == {VARIANT}
    else:
        assert json.loads(text)["model"] == VARIANT
    assert full.server.received == []
    assert [r["model"] for r in variant.server.received] == [VARIANT]
    async with http.get(gateway.url + "/metrics") as response:
        metrics = await response.text()
    assert (
        f'sluice_degraded_total{{model="{MODEL}",outcome="ok",served_model="{VARIANT}",'
        'slo_class="flexible"} 1.0'
    ) in metrics
    async with http.get(gateway.url + "/admin/stats") as response:
        degrade = (await response.json())["degrade"]
    assert degrade["degraded"] == [
        {"model": MODEL, "slo_class": "flexible", "served_model": VARIANT, "requests": 1}
    ]
    assert degrade["pressure"][MODEL]["degrading"] is True


async def test_a_class_that_may_not_degrade_is_refused_and_never_sent_to_the_variant(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    full, variant, gateway = await _fleet(make_sim, make_gateway, SLOW)
    for _ in range(3):  # once degrading is on too
        status, text, headers = await _post(http, gateway.url, "strict")
        assert status == 429, text
        assert headers["x-sluice-reject-reason"] == "tpot_unattainable"
        assert "x-sluice-served-model" not in headers
    status, _, headers = await _post(http, gateway.url, "flexible")
    assert status == 200
    assert headers["x-sluice-served-model"] == VARIANT
    status, _, _ = await _post(http, gateway.url, "strict")
    assert status == 429
    assert [r["model"] for r in variant.server.received] == [VARIANT]
    assert full.server.received == []


async def test_without_pressure_every_class_is_served_by_its_own_model(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    full, variant, gateway = await _fleet(make_sim, make_gateway, None)
    for slo_class in ("flexible", "eager", "strict"):
        status, text, headers = await _post(http, gateway.url, slo_class)
        assert status == 200, text
        assert headers["x-sluice-served-model"] == MODEL
        assert json.loads(text)["model"] == MODEL
    assert variant.server.received == []
    assert len(full.server.received) == 3
