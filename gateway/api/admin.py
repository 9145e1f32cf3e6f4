"""The admin API: bearer-token protected, and closed off-loopback when no token is set."""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.api import (
    admin_adapters,
    admin_config,
    admin_keys,
    admin_pools,
    admin_predictor,
    admin_tenants,
    openapi,
)
from gateway.api.context import RUNTIME
from gateway.api.stats import stats
from gateway.errors import AdminDisabled, Unauthorized
from gateway.net import loopback


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/admin"):
        return await handler(request)
    settings = request.app[RUNTIME].settings
    token = settings.admin_token
    if token is None:
        if not loopback(settings.host):
            raise AdminDisabled(
                "the admin API is off: the gateway listens beyond loopback and has no "
                "SLUICE_ADMIN_TOKEN"
            )
        return await handler(request)
    # Header bytes that are not UTF-8 arrive as surrogate escapes: compare the bytes as sent.
    given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(given, f"Bearer {token}".encode()):
        raise Unauthorized("missing or wrong bearer token for the admin API")
    return await handler(request)


ROUTES: list[tuple[str, str, Any]] = [
    *admin_config.ROUTES,
    *admin_pools.ROUTES,
    *admin_adapters.ROUTES,
    *admin_keys.ROUTES,
    *admin_tenants.ROUTES,
    ("GET", "/admin/stats", stats),
    *admin_predictor.ROUTES,
]


async def openapi_document(_request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


def add_routes(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.router.add_get("/admin/openapi.json", openapi_document)
