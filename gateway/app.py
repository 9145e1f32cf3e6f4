"""Building the aiohttp application and running it."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.api import admin, openai, ops
from gateway.api.client_auth import client_auth
from gateway.api.context import RUNTIME
from gateway.api.limits import add_rate_headers
from gateway.config import GatewayConfig
from gateway.connections import ConnectionGuard, ConnectionLimits, GuardedSite
from gateway.middleware import openai_errors
from gateway.runtime import Runtime
from gateway.settings import Settings

GUARD = web.AppKey("connections", ConnectionGuard)


def build_app(settings: Settings, config: GatewayConfig) -> web.Application:
    guard = ConnectionGuard(
        ConnectionLimits(
            settings.header_timeout_s, settings.keepalive_timeout_s, settings.max_connections
        )
    )
    app = web.Application(
        middlewares=[guard.middleware(), openai_errors, admin.admin_auth, client_auth],
        client_max_size=settings.max_body_bytes,
    )
    runtime = Runtime(settings, config)
    app[RUNTIME] = runtime
    app[GUARD] = guard
    app.cleanup_ctx.append(runtime.lifespan)
    app.on_response_prepare.append(add_rate_headers)
    ops.add_routes(app)
    admin.add_routes(app)
    openai.add_routes(app)
    return app


@dataclass(frozen=True, slots=True)
class RunningServer:
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish (up to the shutdown grace), then
        tear the services down."""
        await self.runner.cleanup()


async def start_server(app: web.Application, host: str, port: int) -> RunningServer:
    """Serve ``app`` on host:port (0 picks a free port). Handlers are cancelled when their
    client disconnects, which is what lets the gateway cancel the upstream request."""
    guard = app.get(GUARD)
    runtime = app.get(RUNTIME)
    keepalive = 75.0 if guard is None else guard.limits.keepalive_timeout_s
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        keepalive_timeout=keepalive,
        # On stop, in-flight handlers get this long to finish before they are cancelled.
        shutdown_timeout=60.0 if runtime is None else runtime.settings.shutdown_grace_s,
    )
    await runner.setup()
    site = (
        web.TCPSite(runner, host, port) if guard is None else GuardedSite(runner, host, port, guard)
    )
    await site.start()
    bound = runner.addresses[0][1]
    return RunningServer(runner, host, int(bound))
