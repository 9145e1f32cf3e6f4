"""Admin routes for tenants: each one's entitlements, limits and weight (part of the shared
config, so written by compare-and-set like any config edit), and its current usage against
its limits and its share of the fleet."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from gateway.api.admin_config import edit_config, put_entry
from gateway.api.context import RUNTIME
from gateway.config import TenantConfig
from gateway.errors import TenantNotFound
from gateway.runtime import Runtime


def _known(runtime: Runtime) -> list[str]:
    """Tenants with an entry, with a client key, or with requests here."""
    waiting, in_flight = runtime.services.scheduler.tenant_load()
    named = {*runtime.config.tenants, *(r.tenant for r in runtime.keys.records())}
    named |= {t for t in (*waiting, *in_flight) if t is not None}
    return sorted(named)


async def _row(runtime: Runtime, tenant: str, now: float) -> dict[str, Any]:
    config, services = runtime.config, runtime.services
    entry = config.tenants.get(tenant)
    waiting, in_flight = services.scheduler.tenant_load()
    fair = services.scheduler.fair
    row: dict[str, Any] = {
        "tenant": tenant,
        "configured": entry is not None,
        "entry": (entry or TenantConfig()).model_dump(mode="json"),
        "keys_active": sum(r.tenant == tenant and r.active for r in runtime.keys.records()),
        "waiting": waiting.get(tenant, 0),
        "in_flight": in_flight.get(tenant, 0),
    }
    if fair is not None:
        counted = [t for t in fair.tenants() if t is not None]
        total = sum(fair.service(t, now) * config.tenant_weight(t) for t in counted)
        weights = sum(config.tenant_weight(t) for t in counted)
        mine = fair.service(tenant, now)
        row["share"] = {
            "service": round(mine, 1),
            "received": round(mine * config.tenant_weight(tenant) / total, 4) if total else 0.0,
            "fair": round(config.tenant_weight(tenant) / weights, 4) if tenant in counted else None,
        }
    if entry is not None:
        state = await services.limiter.usage(tenant, entry.limits)
        row["usage"] = {
            "requests_remaining": state.requests_remaining,
            "requests_reset_s": round(state.requests_reset_s, 3),
            "tokens_remaining": state.tokens_remaining,
            "tokens_reset_s": round(state.tokens_reset_s, 3),
            "concurrent": state.concurrent,
        }
    return row


async def list_tenants(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    now = time.monotonic()
    rows = await asyncio.gather(*(_row(runtime, t, now) for t in _known(runtime)))
    return web.json_response({"tenants": list(rows)})


async def get_tenant(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    name = request.match_info["name"]
    if name not in _known(runtime):
        raise TenantNotFound(f"no tenant {name!r}", param="name")
    return web.json_response(await _row(runtime, name, time.monotonic()))


async def put_tenant(request: web.Request) -> web.Response:
    """Create or replace one tenant's entry."""
    name, entry, version, created = await put_entry(request, "tenants", TenantConfig, "tenant")
    return web.json_response(
        {"name": name, "tenant": entry.model_dump(mode="json"), "version": version},
        status=201 if created else 200,
    )


async def delete_tenant(request: web.Request) -> web.Response:
    """Drop a tenant's entry: its keys stay, its requests are no longer restricted."""
    name = request.match_info["name"]

    def edit(raw: dict[str, Any]) -> None:
        if name not in raw["tenants"]:
            raise TenantNotFound(f"no entry for tenant {name!r}", param="name")
        del raw["tenants"][name]

    version = await edit_config(request, edit)
    return web.json_response({"deleted": name, "version": version})


ROUTES = [
    ("GET", "/admin/tenants", list_tenants),
    ("GET", "/admin/tenants/{name}", get_tenant),
    ("PUT", "/admin/tenants/{name}", put_tenant),
    ("DELETE", "/admin/tenants/{name}", delete_tenant),
]
