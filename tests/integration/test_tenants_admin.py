"""Tenants in the admin API and the CLI (entries by compare-and-set, usage and share), and
per-tenant metrics with bounded labels."""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.app import RunningServer
from tests.conftest import MODEL, GatewayFactory, SimFactory
from tests.integration.test_admin_cli import TOKEN, _admin

BODY = {"model": MODEL, "prompt": "p", "max_tokens": 2}


async def _call(
    http: aiohttp.ClientSession, gateway: RunningServer, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, gateway.url + path, json=body) as response:
        return response.status, await response.json()


async def _complete(http: aiohttp.ClientSession, gateway: RunningServer, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    async with http.post(gateway.url + "/v1/completions", json=BODY, headers=headers) as answer:
        await answer.read()
        return answer.status


async def test_tenant_entries_usage_share_and_metrics(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim()])
    entry = {"weight": 2, "limits": {"requests_per_second": 3, "tokens_per_minute": 50_000}}
    status, created = await _call(http, gateway, "PUT", "/admin/tenants/acme", entry)
    assert status == 201, created
    assert created["tenant"]["weight"] == 2
    status, again = await _call(http, gateway, "PUT", "/admin/tenants/acme", entry)
    assert (status, again["version"]) == (200, created["version"] + 1)
    # Validated against the whole config: an unknown class is refused, nothing written.
    status, error = await _call(
        http, gateway, "PUT", "/admin/tenants/bad", {"default_class": "nope"}
    )
    assert (status, error["error"]["type"]) == (400, "invalid_request_error")
    status, key = await _call(http, gateway, "POST", "/admin/keys", {"tenant": "acme"})
    _, stranger = await _call(http, gateway, "POST", "/admin/keys", {"tenant": "stranger"})
    assert [await _complete(http, gateway, key["key"]) for _ in range(4)] == [200] * 3 + [429]
    assert await _complete(http, gateway, stranger["key"]) == 200
    status, row = await _call(http, gateway, "GET", "/admin/tenants/acme")
    assert status == 200
    assert row["configured"]
    assert row["keys_active"] == 1
    assert row["entry"]["limits"]["requests_per_second"] == 3
    assert row["usage"]["requests_remaining"] == 0
    assert 49_000 < row["usage"]["tokens_remaining"] <= 50_000  # a few used, refilled fast
    assert row["share"]["service"] > 0
    assert row["share"]["fair"] == 0.6667  # acme weighs 2, the stranger 1
    status, listing = await _call(http, gateway, "GET", "/admin/tenants")
    assert [t["tenant"] for t in listing["tenants"]] == ["acme", "stranger"]
    assert listing["tenants"][1]["configured"] is False
    async with http.get(gateway.url + "/metrics") as response:
        text = await response.text()
    assert 'sluice_tenant_requests_total{outcome="ok",tenant="acme"} 3.0' in text
    assert 'sluice_tenant_rejected_total{reason="rate_limit_requests",tenant="acme"} 1.0' in text
    # A tenant without an entry counts as "other": labels stay bounded by the config.
    assert 'sluice_tenant_requests_total{outcome="ok",tenant="other"} 1.0' in text
    assert 'sluice_tenant_limit_remaining{limit="requests",tenant="acme"} 0.0' in text
    assert 'sluice_tenant_weight{tenant="acme"} 2.0' in text
    assert 'sluice_tenant_tokens_total{kind="completion",tenant="acme"}' in text
    status, _ = await _call(http, gateway, "DELETE", "/admin/tenants/acme")
    assert status == 200
    status, error = await _call(http, gateway, "DELETE", "/admin/tenants/acme")
    assert (status, error["error"]["code"]) == (404, "tenant_not_found")
    assert await _complete(http, gateway, key["key"]) == 200  # no longer limited
    status, error = await _call(http, gateway, "GET", "/admin/tenants/nobody")
    assert status == 404


async def test_tenants_from_the_cli(make_sim: SimFactory, make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway([await make_sim()], settings={"admin_token": TOKEN})
    code, answer, err = await _admin(
        gateway, "tenants", "set", "acme", "--weight", "3", "--max-concurrent", "4"
    )
    assert code == 0, err
    assert answer["tenant"]["weight"] == 3
    assert answer["tenant"]["limits"]["max_concurrent"] == 4
    code, shown, err = await _admin(gateway, "tenants", "show", "acme")
    assert code == 0, err
    assert shown["usage"]["concurrent"] == 0
    code, listed, _ = await _admin(gateway, "tenants", "list")
    assert [t["tenant"] for t in listed["tenants"]] == ["acme"]
    code, _, err = await _admin(gateway, "tenants", "set", "acme", "--classes", "nope")
    assert code == 1
    assert "nope" in err
    code, _, err = await _admin(gateway, "tenants", "remove", "acme")
    assert code == 0, err
