"""Admin routes for tenants: each one's entitlements, limits and weight (part of the shared
config, so written by compare-and-set like any config edit), and its current usage against
its limits and its share of the fleet."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.api.admin_config import delete_entry, put_entry
from gateway.api.context import RUNTIME
from gateway.config import GatewayConfig, TenantConfig
from gateway.errors import TenantNotFound
from gateway.runtime import Runtime


@dataclass(frozen=True, slots=True)
class _Census:
    """What every tenant's row reads, gathered once per answer."""

    waiting: Counter[str | None]
    in_flight: Counter[str | None]
    active_keys: Counter[str]
    key_tenants: frozenset[str]
    service: dict[str, float]  # decayed service per tenant with any, per unit of weight
    now: float

    @classmethod
    def of(cls, runtime: Runtime) -> _Census:
        scheduler = runtime.services.scheduler
        waiting, in_flight = scheduler.tenant_load()
        records = runtime.keys.records()
        now = time.monotonic()
        fair = scheduler.fair
        service = (
            {t: fair.service(t, now) for t in fair.tenants() if t is not None}
            if fair is not None
            else {}
        )
        return cls(
            waiting,
            in_flight,
            Counter(r.tenant for r in records if r.active),
            frozenset(r.tenant for r in records),
            service,
            now,
        )

    def known(self, config: GatewayConfig) -> list[str]:
        """Tenants with an entry, with a client key, or with requests here."""
        named = {*config.tenants, *self.key_tenants}
        named |= {t for t in (*self.waiting, *self.in_flight) if t is not None}
        return sorted(named)


async def _row(runtime: Runtime, census: _Census, tenant: str) -> dict[str, Any]:
    config, services = runtime.config, runtime.services
    entry = config.tenants.get(tenant)
    row: dict[str, Any] = {
        "tenant": tenant,
        "configured": entry is not None,
        "entry": (entry or TenantConfig()).model_dump(mode="json"),
        "keys_active": census.active_keys.get(tenant, 0),
        "waiting": census.waiting.get(tenant, 0),
        "in_flight": census.in_flight.get(tenant, 0),
    }
    if services.scheduler.fair is not None:
        served = census.service
        total = sum(value * config.tenant_weight(t) for t, value in served.items())
        weights = sum(config.tenant_weight(t) for t in served)
        mine = served.get(tenant, 0.0)
        weight = config.tenant_weight(tenant)
        row["share"] = {
            "service": round(mine, 1),
            "received": round(mine * weight / total, 4) if total else 0.0,
            "fair": round(weight / weights, 4) if tenant in served else None,
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
    census = _Census.of(runtime)
    names = census.known(runtime.config)
    rows = await asyncio.gather(*(_row(runtime, census, t) for t in names))
    return web.json_response({"tenants": list(rows)})


async def get_tenant(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    name = request.match_info["name"]
    census = _Census.of(runtime)
    if name not in census.known(runtime.config):
        raise TenantNotFound(f"no tenant {name!r}", param="name")
    return web.json_response(await _row(runtime, census, name))


async def put_tenant(request: web.Request) -> web.Response:
    """Create or replace one tenant's entry."""
    name, entry, version, created = await put_entry(request, "tenants", TenantConfig, "tenant")
    return web.json_response(
        {"name": name, "tenant": entry.model_dump(mode="json"), "version": version},
        status=201 if created else 200,
    )


async def delete_tenant(request: web.Request) -> web.Response:
    """Drop a tenant's entry: its keys stay, its requests are no longer restricted."""
    return await delete_entry(
        request,
        "tenants",
        lambda name: TenantNotFound(f"no entry for tenant {name!r}", param="name"),
    )


ROUTES = [
    ("GET", "/admin/tenants", list_tenants),
    ("GET", "/admin/tenants/{name}", get_tenant),
    ("PUT", "/admin/tenants/{name}", put_tenant),
    ("DELETE", "/admin/tenants/{name}", delete_tenant),
]
