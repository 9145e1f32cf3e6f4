"""The SLO guards through the gateway, against simulated vLLM servers."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from bench.sim.profiles import get_profile
from tests.conftest import FAST, MODEL, GatewayFactory, SimFactory, eventually

BODY = {"model": MODEL, "prompt": "hello there", "max_tokens": 8, "ignore_eos": True}
CLASSES = {
    "interactive": {"ttft_ms": 500, "tpot_ms": 50},
    "batch": {"ttft_ms": 5000, "tpot_ms": 200},
    "tiny": {"ttft_ms": 1, "tpot_ms": 200},
    "tiny_best_effort": {"ttft_ms": 1, "tpot_ms": 200, "on_unattainable": "best_effort"},
}


async def _post(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: dict[str, Any] = BODY
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with http.post(url + "/v1/completions", json=body, headers=headers) as response:
        return response.status, await response.json(), dict(response.headers)


async def test_unattainable_ttft_is_refused_at_arrival(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    gateway = await make_gateway([sim], slo_classes=CLASSES)
    status, body, headers = await _post(http, gateway.url, {"x-slo-class": "tiny"})
    assert status == 429
    assert body["error"]["type"] == "slo_unattainable"
    assert body["error"]["code"] == "slo_unattainable"
    assert "time to first token cannot be met" in body["error"]["message"]
    assert headers["x-sluice-reject-reason"] == "ttft_unattainable"
    assert int(headers["Retry-After"]) >= 1
    assert sim.server.received == []
    async with http.get(gateway.url + "/metrics") as response:
        text = await response.text()
    assert (
        'sluice_rejected_total{model="sim-model",reason="ttft_unattainable",slo_class="tiny"} 1.0'
    ) in text
    assert 'sluice_time_to_reject_seconds_count{model="sim-model"} 1.0' in text


async def test_best_effort_class_is_served(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim()], slo_classes=CLASSES)
    status, body, _ = await _post(http, gateway.url, {"x-slo-class": "tiny_best_effort"})
    assert status == 200, body


async def test_unattainable_tpot_is_refused(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim()], slo_classes=CLASSES)
    status, body, headers = await _post(http, gateway.url, {"x-slo-tpot-ms": "1"})
    assert status == 429
    assert headers["x-sluice-reject-reason"] == "tpot_unattainable"
    assert "per token" in body["error"]["message"]


@pytest.mark.parametrize("admission", ["deadline", "arrival"])
async def test_waiting_requests_are_refused_when_their_budget_runs_out(
    make_sim: SimFactory,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    admission: str,
) -> None:
    sim = await make_sim(get_profile("llama8b-h100"))
    gateway = await make_gateway(
        [sim],
        slo_classes=CLASSES,
        backends=[{"name": "b0", "url": sim.url, "max_in_flight": 1}],
        scheduler={"admission": admission},
    )
    # 150 tokens (~1 s): past the interactive class's 0.5 s, well within batch's 5 s even on a
    # busy machine.
    long = asyncio.create_task(
        _post(http, gateway.url, {"x-slo-class": "batch"}, {**BODY, "max_tokens": 150})
    )
    await eventually(lambda: _true(bool(sim.server.engine.running)))
    # The next waits for the one slot, and fits its 5 s budget: it is served after the first.
    after = asyncio.create_task(_post(http, gateway.url, {"x-slo-class": "batch"}))
    status, _, headers = await _post(http, gateway.url, {"x-slo-class": "interactive"})
    assert status == 429
    assert headers["x-sluice-reject-reason"] == "ttft_unattainable"
    assert (await long)[0] == 200
    assert (await after)[0] == 200


async def test_priority_is_set_for_priority_scheduling_backends(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    plain, prioritised = await make_sim(), await make_sim(priority_scheduling=True)
    gateway = await make_gateway(
        [plain, prioritised],
        slo_classes=CLASSES,
        backends=[
            {"name": "b0", "url": plain.url},
            {"name": "b1", "url": prioritised.url, "priority_scheduling": True},
        ],
    )
    for _ in range(4):
        status, _, _ = await _post(http, gateway.url, {"x-slo-class": "interactive"})
        assert status == 200
    assert plain.server.received
    assert prioritised.server.received
    assert all("priority" not in body for body in plain.server.received)
    assert all(body["priority"] == 0 for body in prioritised.server.received)


async def test_latency_models_learn_each_backend(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A few hundred streamed requests bring each backend's ITL model to its own engine."""
    fast_profile = get_profile("llama8b-h100")
    slow_profile = fast_profile.scaled(3)
    # One model each, so that both get traffic whatever the placement prefers.
    fast = await make_sim(fast_profile, model="fast")
    slow = await make_sim(slow_profile, model="slow")
    gateway = await make_gateway([fast, slow], slo_classes=CLASSES)

    async def one(model: str) -> None:
        body = {**BODY, "model": model, "max_tokens": 41, "stream": True}  # 5 ITL windows
        async with http.post(
            gateway.url + "/v1/completions", json=body, headers={"x-slo-class": "batch"}
        ) as response:
            assert response.status == 200
            await response.read()

    for _ in range(10):
        await asyncio.gather(*(one(m) for m in ("fast", "slow") for _ in range(4)))
    async with http.get(gateway.url + "/admin/stats") as response:
        stats = {b["name"]: b for b in (await response.json())["backends"]}
    for name, profile in (("b0", fast_profile), ("b1", slow_profile)):
        itl = stats[name]["latency_models"]["itl"]
        assert itl["observations"] >= 150, name
        # At a batch of 4 short requests the engine's step is beta0 + 4*beta2 (+ context).
        true = profile.step_seconds(0, 4, 4 * 25)
        fitted = itl["d"] + itl["b"] * 4 + itl["a"] * 4 * 25 + itl["c"] * 25
        assert 0.7 * true < fitted < 1.6 * true, (name, fitted, true)
    assert stats["b0"]["latency_models"]["itl"]["observations"] > 0


async def test_admin_stats_needs_the_token_when_one_is_set(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim(FAST)], settings={"admin_token": "s3cret"})
    async with http.get(gateway.url + "/admin/stats") as response:
        assert response.status == 401
        assert (await response.json())["error"]["type"] == "authentication_error"
    async with http.get(
        gateway.url + "/admin/stats", headers={"Authorization": "Bearer s3cret"}
    ) as response:
        assert response.status == 200
        assert (await response.json())["backends"][0]["name"] == "b0"


async def _true(value: bool) -> bool:
    return value


async def test_completed_requests_become_samples_and_retrain_is_guarded(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim(FAST)])
    for i in range(5):
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"hello {i}"}],
            "max_tokens": 5000,
        }
        async with http.post(gateway.url + "/v1/chat/completions", json=body) as response:
            assert response.status == 200
    async with http.get(gateway.url + "/admin/predictor") as response:
        info = await response.json()
    assert info["version"] == "2"
    assert info["samples"] == 5
    async with http.get(gateway.url + "/admin/predictor/samples") as response:
        lines = (await response.text()).splitlines()
    assert len(lines) == info["samples"]
    async with http.post(gateway.url + "/admin/predictor/retrain") as response:
        outcome = await response.json()
    assert response.status == 200
    assert outcome["accepted"] is False
    assert "recent samples" in outcome["reason"]
