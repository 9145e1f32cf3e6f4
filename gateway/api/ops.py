"""Liveness, readiness and metrics."""

from __future__ import annotations

from aiohttp import web

from gateway.api.context import RUNTIME
from gateway.errors import error_body


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Ready when at least one backend passes its probes, and not shutting down."""
    runtime = request.app[RUNTIME]
    if runtime.draining:
        return web.json_response(
            error_body("shutting down", "service_unavailable", code="draining"), status=503
        )
    fleet = runtime.services.fleet
    healthy = sorted(b.name for b in fleet if b.healthy)
    if healthy:
        return web.json_response({"ready": True, "healthy_backends": healthy})
    return web.json_response(
        error_body("no healthy backend", "service_unavailable", code="not_ready"), status=503
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[RUNTIME].services.metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
