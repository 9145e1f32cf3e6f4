"""Admin routes for pools: their macro instances, who is active in each, their bounds and
their scale recommendation.

The instances follow the pool's backends by the mitosis rules whenever a backend is added,
removed or moved (``macro.with_layout`` runs on every config write); bounds changed here
re-lay the pool the same way.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.admin_config import Method, delete_entry, put_entry
from gateway.api.context import RUNTIME
from gateway.config import PoolConfig
from gateway.errors import PoolNotFound
from gateway.scheduling.macro import bounds_of, pool_members


def pools_view(request: web.Request) -> dict[str, Any]:
    runtime = request.app[RUNTIME]
    config, services = runtime.config, runtime.services
    active = services.scheduler.active_backends()
    scaler = services.scaler
    fleet = {b.name: b for b in services.fleet}
    members = pool_members(config.backends)
    pools: dict[str, Any] = {}
    for pool in sorted(set(members) | set(config.pools)):
        bounds = bounds_of(config, pool)
        instances = []
        for number, names in enumerate(config.macro_instances.get(pool, ())):
            instance = f"{pool}/{number}"
            instances.append(
                {
                    "id": instance,
                    "active": active.get(instance),
                    "backends": [
                        {
                            "name": name,
                            "routable": name in fleet and fleet[name].routable,
                            "in_flight": fleet[name].in_flight if name in fleet else 0,
                        }
                        for name in names
                    ],
                }
            )
        state = scaler.pools.get(pool) if scaler is not None else None
        pools[pool] = {
            "min_size": bounds.low,
            "max_size": bounds.high,
            "configured": pool in config.pools,
            "webhook_url": (
                str(config.pools[pool].webhook_url)
                if pool in config.pools and config.pools[pool].webhook_url
                else None
            ),
            "macro_instances": instances,
            **(state.as_json() if state is not None else {"signals": None, "recommendation": None}),
        }
    return {"placement": config.scheduler.placement, "pools": pools}


async def list_pools(request: web.Request) -> web.Response:
    return web.json_response(pools_view(request))


async def put_pool(request: web.Request) -> web.Response:
    """Create or replace a pool's settings (bounds, webhook); its instances are re-laid."""
    name, _, version, created = await put_entry(request, "pools", PoolConfig, "pool")
    body = pools_view(request)["pools"].get(name, {})
    return web.json_response(
        {"name": name, "pool": body, "version": version}, status=201 if created else 200
    )


async def delete_pool(request: web.Request) -> web.Response:
    """Drop a pool's settings: its backends stay, under the default bounds."""
    return await delete_entry(
        request, "pools", lambda name: PoolNotFound(f"no settings for pool {name!r}", param="name")
    )


ROUTES: list[tuple[Method, str, Any]] = [
    ("GET", "/admin/pools", list_pools),
    ("PUT", "/admin/pools/{name}", put_pool),
    ("DELETE", "/admin/pools/{name}", delete_pool),
]
