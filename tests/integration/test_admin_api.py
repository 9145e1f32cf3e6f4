"""The admin API beyond the whole-config document: SLO classes, backend states, retargeting,
and the OpenAPI document that describes it all."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from openapi_spec_validator import validate

from gateway.api.openapi import described
from gateway.app import RunningServer
from tests.conftest import MODEL, GatewayFactory, SimFactory, eventually, request_json


async def _complete(
    http: aiohttp.ClientSession, gw: RunningServer, model: str = MODEL, **extra: Any
) -> tuple[int, dict[str, str]]:
    body = {"model": model, "prompt": "x", "max_tokens": 3, "ignore_eos": True, **extra}
    async with http.post(gw.url + "/v1/completions", json=body) as response:
        await response.read()
        return response.status, dict(response.headers)


async def test_slo_class_routes(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway([await make_sim()])
    classes = gw.url + "/admin/slo-classes"
    status, listed = await request_json(http, "GET", classes)
    assert status == 200
    assert listed["default_class"] == "batch"
    assert set(listed["slo_classes"]) == {"interactive", "batch"}

    status, answer = await request_json(
        http, "PUT", classes + "/gold", {"ttft_ms": 800, "tpot_ms": 40}
    )
    assert status == 201
    assert answer["slo_class"]["on_unattainable"] == "reject"
    async with http.post(
        gw.url + "/v1/completions",
        json={"model": MODEL, "prompt": "x", "max_tokens": 2},
        headers={"x-slo-class": "gold"},
    ) as response:
        assert response.status == 200
    status, answer = await request_json(
        http, "PUT", classes + "/gold", {"ttft_ms": 900, "tpot_ms": 40, "on_unattainable": "x"}
    )
    assert status == 400
    assert answer["error"]["param"] == "on_unattainable"
    status, answer = await request_json(
        http, "PUT", classes + "/gold", {"ttft_ms": 900, "tpot_ms": 45}
    )
    assert status == 200
    _, listed = await request_json(http, "GET", classes)
    assert listed["slo_classes"]["gold"]["tpot_ms"] == 45

    status, answer = await request_json(http, "DELETE", classes + "/batch")
    assert status == 409  # the default class
    assert answer["error"]["code"] == "slo_class_in_use"
    status, answer = await request_json(http, "DELETE", classes + "/nope")
    assert status == 404
    status, _ = await request_json(http, "DELETE", classes + "/gold")
    assert status == 200
    async with http.post(
        gw.url + "/v1/completions",
        json={"model": MODEL, "prompt": "x", "max_tokens": 2},
        headers={"x-slo-class": "gold"},
    ) as response:
        assert response.status == 400  # the class is gone
        assert (await response.json())["error"]["param"] == "x-slo-class"


async def test_drain_disable_and_activate(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    first, second = await make_sim(), await make_sim()
    gw = await make_gateway([first, second])
    backend = gw.url + "/admin/backends/b0"

    # b0 drains while a long request runs there: that one finishes, new ones go to b1.
    long = asyncio.create_task(_complete(http, gw, max_tokens=300))
    await eventually(lambda: _is(bool(first.server.engine.running)), what="b0 busy")
    status, answer = await request_json(http, "PATCH", backend, {"state": "draining"})
    assert status == 200
    assert answer["backend"]["state"] == "draining"
    assert not answer["backend"]["routable"]
    for _ in range(4):
        status, headers = await _complete(http, gw)
        assert (status, headers["x-sluice-backend"]) == (200, "b1")
    status, headers = await long
    assert (status, headers["x-sluice-backend"]) == (200, "b0")

    status, _ = await request_json(
        http, "PATCH", gw.url + "/admin/backends/b1", {"state": "disabled"}
    )
    assert status == 200
    status, _ = await _complete(http, gw)
    assert status == 503  # nothing active serves the model
    status, answer = await request_json(http, "PATCH", backend, {"state": "paused"})
    assert status == 400
    assert answer["error"]["param"] == "state"

    status, _ = await request_json(http, "PATCH", backend, {"state": "active"})
    assert status == 200
    status, headers = await _complete(http, gw)
    assert (status, headers["x-sluice-backend"]) == (200, "b0")


async def test_retarget_takes_traffic_once_the_backend_serves_the_model(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    old, moving = await make_sim(), await make_sim()
    gw = await make_gateway([old, moving], settings={"probe_interval_s": 0.1})
    status, answer = await request_json(
        http, "PATCH", gw.url + "/admin/backends/b1", {"models": ["other-model"]}
    )
    assert status == 200
    assert answer["backend"]["models"] == []  # meant for other-model; does not list it yet
    for _ in range(4):  # the old model no longer goes to b1
        status, headers = await _complete(http, gw)
        assert (status, headers["x-sluice-backend"]) == (200, "b0")
    status, _ = await _complete(http, gw, model="other-model")
    assert status == 404

    moving.server.model = "other-model"  # the operator restarts b1 on the new model

    async def serves_it() -> bool:
        status, _ = await _complete(http, gw, model="other-model")
        return status == 200

    await eventually(serves_it, what="b1 taking other-model's traffic after its probe")
    status, headers = await _complete(http, gw, model="other-model")
    assert headers["x-sluice-backend"] == "b1"
    status, answer = await request_json(
        http, "PATCH", gw.url + "/admin/backends/b1", {"pool": "p2"}
    )
    assert answer["backend"]["pool"] == "p2"


async def _is(value: bool) -> bool:
    return value


async def test_openapi_document_is_valid_and_complete(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway([await make_sim()])
    status, document = await request_json(http, "GET", gw.url + "/admin/openapi.json")
    assert status == 200
    validate(document)
    routes = {
        (route.method, route.resource.canonical)
        for route in gw.runner.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/admin")
        and route.method != "HEAD"
    }
    assert routes == described()
    patch = document["paths"]["/admin/backends/{name}"]["patch"]
    schema = patch["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/BackendPatch"}
    states = document["components"]["schemas"]["BackendConfig"]["properties"]["state"]
    assert states["enum"] == ["active", "draining", "disabled"]
