"""The admin API: bearer-token protected, and closed off-loopback when no token is set."""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import asdict
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.api.openai import RUNTIME
from gateway.errors import SluiceError, Unauthorized


class Forbidden(SluiceError):
    status = 403
    error_type = "permission_error"
    code = "admin_disabled"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/admin"):
        return await handler(request)
    settings = request.app[RUNTIME].settings
    token = settings.admin_token
    if token is None:
        if not _loopback(settings.host):
            raise Forbidden(
                "the admin API is off: the gateway listens beyond loopback and has no "
                "SLUICE_ADMIN_TOKEN"
            )
        return await handler(request)
    given = request.headers.get("Authorization", "")
    expected = f"Bearer {token}"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("missing or wrong bearer token for the admin API")
    return await handler(request)


def backend_stats(request: web.Request) -> list[dict[str, Any]]:
    services = request.app[RUNTIME].services
    rows = []
    for b in services.fleet:
        batch, context = b.decoding()
        rows.append(
            {
                "name": b.name,
                "url": b.config.base_url,
                "healthy": b.healthy,
                "models": sorted(b.models),
                "in_flight": b.in_flight,
                "decoding": batch,
                "mean_context": context,
                "pending_prefill_tokens": b.pending_prefill(),
                "kv_capacity_tokens": b.kv_capacity,
                "kv_reserved_tokens": sum(r.reserved_kv for r in b.inflight.values()),
                "engine": asdict(b.load) if b.load is not None else None,
                "latency_models": {
                    "prefill": {**asdict(b.prefill.params), "observations": b.prefill.observations},
                    "itl": {**asdict(b.itl.params), "observations": b.itl.observations},
                },
                "last_error": b.last_error,
            }
        )
    return rows


async def stats(request: web.Request) -> web.Response:
    services = request.app[RUNTIME].services
    return web.json_response(
        {
            "queues": dict(services.scheduler.queue_depths()),
            "backends": backend_stats(request),
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/stats", stats)
