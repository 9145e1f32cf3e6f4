"""Pools and macro instances through the admin API, rolling activation over HTTP, scale
recommendations to a webhook, and a cold start."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from gateway.app import RunningServer, start_server
from gateway.proxy import BACKEND_HEADER
from tests.conftest import MODEL, GatewayFactory, SimFactory, eventually, request_json

DEAD_URL = "http://127.0.0.1:9"  # nothing listens there: connection refused


async def _layout(http: aiohttp.ClientSession, gw: RunningServer) -> list[list[str]]:
    _, answer = await request_json(http, "GET", gw.url + "/admin/pools")
    pool = answer["pools"].get(MODEL, {"macro_instances": []})
    return [[b["name"] for b in inst["backends"]] for inst in pool["macro_instances"]]


async def _complete(
    http: aiohttp.ClientSession, gw: RunningServer, tokens: int = 4, slo: str = "batch"
) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = {"model": MODEL, "prompt": "x", "max_tokens": tokens, "ignore_eos": True}
    async with http.post(
        gw.url + "/v1/completions", json=body, headers={"x-slo-class": slo}
    ) as response:
        return response.status, dict(response.headers), await response.json()


async def test_macro_instances_follow_the_fleet_across_replicas(
    make_sim: SimFactory,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    redis_url: str,
) -> None:
    sims = [await make_sim() for _ in range(4)]
    shared = {"redis_url": redis_url, "redis_prefix": f"t-{uuid.uuid4().hex}", "config_poll_s": 0.1}
    backends = [{"name": "b0", "url": sims[0].url, "models": [MODEL]}]
    pools = {MODEL: {"min_size": 1, "max_size": 2}}
    first = await make_gateway([], settings=shared, backends=backends, pools=pools)
    second = await make_gateway([], settings=shared, backends=backends, pools=pools)
    assert await _layout(http, first) == [["b0"]]

    expected = [
        [["b0", "b1"]],  # expand up to N_u
        [["b0"], ["b1", "b2"]],  # split: the newcomer joins the new half
        [["b0", "b3"], ["b1", "b2"]],  # fill the instance with room
    ]
    for index, layout in enumerate(expected, start=1):
        backend = {"name": f"b{index}", "url": sims[index].url, "models": [MODEL]}
        status, _ = await request_json(http, "POST", first.url + "/admin/backends", backend)
        assert status == 201
        assert await _layout(http, first) == layout

        async def seen(want: list[list[str]] = layout) -> bool:
            return await _layout(http, second) == want

        await eventually(seen, what=f"the other replica sees {layout}")

    # A removed backend drains: a stream running on it finishes after the removal.
    async with http.post(
        second.url + "/v1/completions",
        json={"model": MODEL, "prompt": "x", "max_tokens": 300, "ignore_eos": True, "stream": True},
    ) as stream:
        assert stream.status == 200
        victim = stream.headers[BACKEND_HEADER]
        status, _ = await request_json(http, "DELETE", second.url + f"/admin/backends/{victim}")
        assert status == 202
        body = await stream.read()
    assert body.rstrip().endswith(b"data: [DONE]")
    # From [[b0, b3], [b1, b2]]: its instance shrinks; 1 + 2 > N_u, so nothing merges.
    after_removal = {
        "b0": [["b3"], ["b1", "b2"]],
        "b3": [["b0"], ["b1", "b2"]],
        "b1": [["b0", "b3"], ["b2"]],
        "b2": [["b0", "b3"], ["b1"]],
    }
    assert await _layout(http, second) == after_removal[victim]

    # Bounds changed at run time re-lay the pool: one instance of up to 4.
    status, answer = await request_json(
        http, "PUT", first.url + f"/admin/pools/{MODEL}", {"min_size": 1, "max_size": 4}
    )
    assert status == 200
    assert answer["pool"]["max_size"] == 4
    assert len(await _layout(http, first)) == 1
    status, answer = await request_json(
        http, "PUT", first.url + f"/admin/pools/{MODEL}", {"min_size": 3, "max_size": 4}
    )
    assert status == 400
    assert "2*min_size-1" in answer["error"]["message"]
    status, answer = await request_json(http, "DELETE", first.url + "/admin/pools/nothing")
    assert status == 404
    assert answer["error"]["code"] == "pool_not_found"


async def test_removing_backends_merges_instances(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sims = [await make_sim() for _ in range(3)]
    gw = await make_gateway(
        [],
        backends=[{"name": f"b{i}", "url": s.url, "models": [MODEL]} for i, s in enumerate(sims)],
        pools={MODEL: {"min_size": 1, "max_size": 2}},
    )
    assert await _layout(http, gw) == [["b0"], ["b1", "b2"]]
    await request_json(http, "DELETE", gw.url + "/admin/backends/b2")
    assert await _layout(http, gw) == [["b0", "b1"]]  # 1 + 1 <= N_u: merged
    await request_json(http, "DELETE", gw.url + "/admin/backends/b0")
    assert await _layout(http, gw) == [["b1"]]


async def test_rolling_activation_sticks_to_the_active_backend(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sims = [await make_sim() for _ in range(3)]
    gw = await make_gateway(sims, scheduler={"placement": "rolling"})
    # Short prompts and a 5 s TTFT target: EcoServe's check keeps passing on the active one.
    answers = await asyncio.gather(*(_complete(http, gw) for _ in range(8)))
    assert all(status == 200 for status, _, _ in answers)
    used = {headers[BACKEND_HEADER] for _, headers, _ in answers}
    _, pools = await request_json(http, "GET", gw.url + "/admin/pools")
    assert pools["placement"] == "rolling"
    (instance,) = pools["pools"]["default"]["macro_instances"]
    assert used == {instance["active"]}

    # The guards' own placement spreads the same load instead.
    spread = await make_gateway(sims)
    answers = await asyncio.gather(*(_complete(http, spread) for _ in range(8)))
    assert len({headers[BACKEND_HEADER] for _, headers, _ in answers}) > 1


async def test_cold_start_holds_requests_and_recommends_scale_out(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    calls: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        calls.append(await request.json())
        return web.Response(status=204)

    receiver_app = web.Application()
    receiver_app.router.add_post("/scale", receive)
    receiver = await start_server(receiver_app, "127.0.0.1", 0)
    try:
        gw = await make_gateway(
            [],
            settings={"scale_interval_s": 0.05},
            backends=[{"name": "cold", "url": DEAD_URL, "models": [MODEL]}],
            pools={MODEL: {"webhook_url": receiver.url + "/scale"}},
        )
        # Nothing is ready: a request is held, not failed, while its TTFT budget lasts ...
        started = time.monotonic()
        status, headers, answer = await _complete(http, gw, slo="interactive")
        waited = time.monotonic() - started
        assert status == 503
        assert answer["error"]["code"] == "no_backend_available"
        assert headers["x-sluice-reject-reason"] == "no_ready_backend"
        assert waited >= 0.45  # held until its 500 ms deadline, not failed at once

        # ... and one with a longer budget is served once a backend turns healthy.
        held = asyncio.ensure_future(_complete(http, gw, slo="batch"))

        async def advised() -> bool:
            return any(c["recommendation"]["action"] == "scale_out" for c in calls)

        await eventually(advised, what="a scale-out recommendation at the webhook")
        call = next(c for c in calls if c["recommendation"]["action"] == "scale_out")
        assert call["pool"] == MODEL
        assert call["recommendation"]["backends"] >= 1
        assert "cold start" in call["recommendation"]["reason"]
        assert not held.done()
        sim = await make_sim()
        status, _ = await request_json(
            http, "PATCH", gw.url + "/admin/backends/cold", {"url": sim.url}
        )
        assert status == 200
        status, headers, _ = await held
        assert status == 200
        assert headers[BACKEND_HEADER] == "cold"

        async def settled() -> bool:
            return bool(calls) and calls[-1]["recommendation"]["action"] != "scale_out"

        await eventually(settled, what="the recommendation to change back once served")
        # One ready backend, nothing waiting: hold, neither add nor give back. The gauges
        # follow the scaler's next refresh (it may first have seen the queue empty before
        # the backend counted as ready).
        wanted = [
            f'sluice_pool_ready_backends{{pool="{MODEL}"}} 1.0',
            f'sluice_pool_macro_instances{{pool="{MODEL}"}} 1.0',
            f'sluice_pool_scale_recommendation{{pool="{MODEL}"}} 0.0',
        ]

        async def gauges() -> bool:
            async with http.get(gw.url + "/metrics") as response:
                text = await response.text()
            return all(line in text for line in wanted)

        await eventually(gauges, what="the pool gauges of a served pool")
    finally:
        await receiver.stop()
