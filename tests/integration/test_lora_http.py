"""LoRA adapters through the gateway, against simulated vLLM servers with adapter slots: loaded
where a request is placed, reused there, evicted least recently used, pinned to a pool."""

from __future__ import annotations

from typing import Any

import aiohttp

from bench.sim.server import Faults
from tests.conftest import MODEL, GatewayFactory, SimFactory, request_json

ADAPTERS = {name: {"base": MODEL, "path": f"/adapters/{name}", "load_ms": 50} for name in "abc"}


async def _complete(
    http: aiohttp.ClientSession, url: str, model: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = {"model": model, "prompt": "hello", "max_tokens": 4}
    async with http.post(url + "/v1/completions", json=body) as response:
        return response.status, await response.json(), dict(response.headers)


async def test_an_adapter_is_loaded_once_where_it_is_sent_and_reused(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sims = [await make_sim(max_loras=2, lora_load_s=0.05) for _ in range(2)]
    gateway = await make_gateway(sims, adapters=ADAPTERS)
    for _ in range(4):
        status, body, headers = await _complete(http, gateway.url, "a")
        assert status == 200, body
        assert body["model"] == "a"
        assert headers["x-sluice-served-model"] == "a"
    holders = [s for s in sims if "a" in s.server.adapters]
    assert len(holders) == 1
    assert holders[0].server.adapters["a"] == "/adapters/a"
    assert sum(s.server.lora_loads for s in sims) == 1
    assert len(holders[0].server.received) == 4  # every request went where it is resident
    _, backends = await request_json(http, "GET", gateway.url + "/admin/backends")
    rows = {row["name"]: row["adapters"] for row in backends["backends"]}
    held = [name for name, row in rows.items() if row["resident"] == ["a"]]
    assert len(held) == 1
    assert rows[held[0]]["slots"] == 2  # read from the engine's vllm:lora_requests_info
    _, listing = await request_json(http, "GET", gateway.url + "/admin/adapters")
    assert listing["adapters"]["a"]["resident_on"] == held
    assert 0 < listing["adapters"]["a"]["load_s"] < 5  # measured, not the prior


async def test_full_slots_evict_the_least_recently_used_adapter(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(max_loras=2)
    gateway = await make_gateway([sim], adapters=ADAPTERS)
    for model in ("a", "b", "a", "c"):  # c evicts b: a was used more recently
        status, body, _ = await _complete(http, gateway.url, model)
        assert status == 200, body
    assert sorted(sim.server.adapters) == ["a", "c"]
    assert (sim.server.lora_loads, sim.server.lora_unloads) == (3, 1)
    status, body, _ = await _complete(http, gateway.url, "b")  # and back: a is evicted now
    assert status == 200, body
    assert sorted(sim.server.adapters) == ["b", "c"]


async def test_a_pinned_adapter_is_loaded_only_in_its_pool(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    first, second = await make_sim(max_loras=2), await make_sim(max_loras=2)
    gateway = await make_gateway(
        [first, second],
        adapters=ADAPTERS,
        backends=[
            {"name": "b0", "url": first.url, "pool": "general"},
            {"name": "b1", "url": second.url, "pool": "tuned"},
        ],
    )
    status, pinned = await request_json(
        http, "PUT", gateway.url + "/admin/adapters/a/pin", {"pool": "tuned"}
    )
    assert status == 200, pinned
    assert pinned["adapter"]["pool"] == "tuned"
    for _ in range(3):
        status, body, headers = await _complete(http, gateway.url, "a")
        assert status == 200, body
        assert headers["x-sluice-backend"] == "b1"
    assert "a" not in first.server.adapters
    status, bad = await request_json(http, "PUT", gateway.url + "/admin/adapters/a/pin", {"pol": 1})
    assert status == 400
    assert bad["error"]["param"] == "pool"
    status, missing = await request_json(http, "DELETE", gateway.url + "/admin/adapters/zz/pin")
    assert status == 404
    assert missing["error"]["code"] == "adapter_not_found"
    status, unpinned = await request_json(http, "DELETE", gateway.url + "/admin/adapters/a/pin")
    assert status == 200
    assert unpinned["adapter"]["pool"] is None


async def test_adapters_are_added_at_run_time_and_unknown_ones_are_404(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(max_loras=1)
    gateway = await make_gateway([sim])
    status, body, _ = await _complete(http, gateway.url, "sql")
    assert status == 404
    assert body["error"]["param"] == "model"
    status, created = await request_json(
        http, "PUT", gateway.url + "/admin/adapters/sql", {"base": MODEL, "path": "/x/sql"}
    )
    assert status == 201, created
    status, body, _ = await _complete(http, gateway.url, "sql")
    assert status == 200, body
    assert sim.server.adapters == {"sql": "/x/sql"}


async def test_an_adapter_the_gateway_did_not_configure_is_never_evicted(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    first, second = await make_sim(max_loras=1), await make_sim(max_loras=1)
    first.server.adapters["foreign"] = "/elsewhere"  # loaded by someone else, path unknown
    gateway = await make_gateway([first, second], adapters=ADAPTERS)
    for _ in range(3):
        status, body, headers = await _complete(http, gateway.url, "a")
        assert status == 200, body
        assert headers["x-sluice-backend"] == "b1"
    assert first.server.adapters == {"foreign": "/elsewhere"}
    assert first.server.lora_loads == 0


async def test_a_load_that_fails_is_retried_elsewhere(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    first, second = await make_sim(max_loras=2), await make_sim(max_loras=2)
    first.server.faults = Faults(fail_lora_loads=1)  # b0, tried first, answers its load 404
    gateway = await make_gateway([first, second], adapters=ADAPTERS)
    status, body, headers = await _complete(http, gateway.url, "a")
    assert status == 200, body
    assert headers["x-sluice-backend"] == "b1"
    assert first.server.lora_failed == 1
    assert "a" not in first.server.adapters
    assert second.server.adapters == {"a": "/adapters/a"}
    _, listing = await request_json(http, "GET", gateway.url + "/admin/adapters")
    assert listing["adapters"]["a"]["resident_on"] == ["b1"]
    assert listing["adapters"]["a"]["loading_on"] == []
