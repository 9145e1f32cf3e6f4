"""Client API keys: created, listed, rotated and revoked through the admin API and the CLI,
honoured by every replica, and checked on every /v1 request."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import redis.asyncio as redis

from gateway.app import RunningServer
from tests.conftest import MODEL, GatewayFactory, SimFactory, eventually
from tests.integration.test_admin_cli import _admin

BODY = {"model": MODEL, "prompt": "p", "max_tokens": 2}
TOKEN = "s3cret-token"


async def _complete(
    http: aiohttp.ClientSession, gateway: RunningServer, key: str | None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with http.post(gateway.url + "/v1/completions", json=BODY, headers=headers) as answer:
        return answer.status, await answer.json(), dict(answer.headers)


async def _create(http: aiohttp.ClientSession, gateway: RunningServer, tenant: str) -> Any:
    async with http.post(gateway.url + "/admin/keys", json={"tenant": tenant}) as response:
        assert response.status == 201, await response.text()
        return await response.json()


async def test_without_keys_the_gateway_is_open_on_loopback_only(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    assert (await _complete(http, await make_gateway([sim]), None))[0] == 200
    # Listening beyond loopback (the setting is what the policy reads), with no key: refused.
    # (The admin token is set, as it must be off loopback; this test never calls /admin.)
    wide = await make_gateway([sim], settings={"host": "0.0.0.0", "admin_token": TOKEN})
    status, body, _ = await _complete(http, wide, None)
    assert (status, body["error"]["code"]) == (403, "client_keys_required")
    opened = await make_gateway(
        [sim], settings={"host": "0.0.0.0", "admin_token": TOKEN, "open_access": True}
    )
    assert (await _complete(http, opened, None))[0] == 200


async def test_keys_are_checked_on_every_v1_request(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim()])
    created = await _create(http, gateway, "acme")
    key = created["key"]
    assert key.startswith("sk-sluice-")
    assert created["tenant"] == "acme"
    assert created["active"] is True
    # Once a key exists, /v1 (models listing included) needs one.
    for bad in (None, "sk-sluice-000000000000-" + "x" * 43, key + "x", "Basic abc"):
        status, body, headers = await _complete(http, gateway, bad)
        assert status == 401, bad
        assert body["error"]["type"] == "authentication_error"
        assert headers["WWW-Authenticate"] == 'Bearer realm="sluice"'
    async with http.get(gateway.url + "/v1/models") as response:
        assert response.status == 401
    assert (await _complete(http, gateway, key))[0] == 200
    # The listing never shows a secret or its digest.
    async with http.get(gateway.url + "/admin/keys") as response:
        listed = await response.text()
    assert key.rsplit("-", 1)[1] not in listed
    assert "digest" not in listed
    assert json.loads(listed)["keys"][0]["id"] == created["id"]


async def test_a_revocation_reaches_every_replica_and_the_store_holds_only_digests(
    make_sim: SimFactory,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    redis_url: str,
) -> None:
    sim = await make_sim()
    prefix = f"k-{uuid.uuid4().hex[:8]}"
    shared = {"redis_url": redis_url, "redis_prefix": prefix, "config_poll_s": 0.2}
    first = await make_gateway([sim], settings=shared)
    second = await make_gateway([sim], settings=shared)
    key = (await _create(http, first, "acme"))["key"]

    async def honoured() -> bool:
        return (await _complete(http, second, key))[0] == 200

    await eventually(honoured, what="the other replica takes the new key")
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        found = await raw.hgetall(f"{{{prefix}}}:keys")
        stored = {str(k): str(v) for k, v in found.items()}
    finally:
        await raw.aclose()
    assert len(stored) == 1
    assert key.rsplit("-", 1)[1] not in json.dumps(stored)  # the secret is nowhere
    key_id = next(iter(stored))
    async with http.delete(first.url + f"/admin/keys/{key_id}") as response:
        assert response.status == 200
        assert (await response.json())["active"] is False

    async def refused() -> bool:
        return (await _complete(http, second, key))[0] == 401

    await eventually(refused, within_s=5, what="the other replica refuses the revoked key")


async def test_rotation_keeps_the_old_key_for_its_grace_period(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim()])
    old = await _create(http, gateway, "acme")
    async with http.post(
        gateway.url + f"/admin/keys/{old['id']}/rotate", json={"grace_s": 1.0}
    ) as response:
        assert response.status == 201
        new = await response.json()
    assert (new["replaces"], new["tenant"]) == (old["id"], "acme")
    assert (await _complete(http, gateway, new["key"]))[0] == 200
    assert (await _complete(http, gateway, old["key"]))[0] == 200  # still within its grace
    await asyncio.sleep(1.1)
    assert (await _complete(http, gateway, old["key"]))[0] == 401
    async with http.post(gateway.url + "/admin/keys/nope/rotate") as response:
        assert response.status == 404
    async with http.post(gateway.url + "/admin/keys", json={"tenant": "a b"}) as response:
        assert (response.status, (await response.json())["error"]["param"]) == (400, "tenant")


async def test_keys_from_the_cli(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim()], settings={"admin_token": TOKEN})
    code, created, err = await _admin(gateway, "keys", "create", "acme", "--name", "ci")
    assert code == 0, err
    assert (await _complete(http, gateway, created["key"]))[0] == 200
    code, listed, _ = await _admin(gateway, "keys", "list")
    assert [k["name"] for k in listed["keys"]] == ["ci"]
    code, rotated, _ = await _admin(gateway, "keys", "rotate", created["id"])
    assert code == 0
    assert (await _complete(http, gateway, created["key"]))[0] == 401
    code, _, _ = await _admin(gateway, "keys", "revoke", rotated["id"])
    assert code == 0
    assert (await _complete(http, gateway, rotated["key"]))[0] == 401


async def test_entitlements_are_enforced_for_a_keys_tenant(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    tenants = {
        "acme": {"models": [MODEL], "min_ttft_ms": 1000, "default_class": "batch"},
        "easy": {"min_ttft_ms": 1000, "on_excess": "clamp"},
    }
    gateway = await make_gateway([await make_sim()], tenants=tenants)
    acme = (await _create(http, gateway, "acme"))["key"]
    easy = (await _create(http, gateway, "easy"))["key"]
    free = (await _create(http, gateway, "other"))["key"]  # no entry: not restricted
    url = gateway.url + "/v1/completions"

    async def status(key: str, headers: dict[str, str], body: dict[str, Any] = BODY) -> Any:
        headers = {"Authorization": f"Bearer {key}", **headers}
        async with http.post(url, json=body, headers=headers) as response:
            return response.status, (await response.json()).get("error")

    assert (await status(acme, {}))[0] == 200  # its default: batch (5 s)
    code, error = await status(acme, {"x-slo-class": "interactive"})  # 500 ms: too tight
    assert (code, error["code"], error["param"]) == (403, "slo_not_permitted", "x-slo-class")
    code, error = await status(acme, {"x-slo-ttft-ms": "200"})
    assert (code, error["param"]) == (403, "x-slo-ttft-ms")
    code, error = await status(acme, {}, {**BODY, "model": "elsewhere"})
    assert (code, error["code"]) == (403, "model_not_permitted")
    assert (await status(easy, {"x-slo-ttft-ms": "200"}))[0] == 200  # clamped to 1,000 ms
    assert (await status(free, {"x-slo-ttft-ms": "200"}))[0] == 200
    async with http.get(gateway.url + "/metrics") as response:
        text = await response.text()
    assert 'sluice_requests_total{model="sim-model",outcome="ok",slo_class="custom"}' in text
