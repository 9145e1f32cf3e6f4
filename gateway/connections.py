"""Client connections with bounds: how long a request's headers may take, how long an idle
connection is kept, and how many connections are held at once.

aiohttp bounds none of the first two for a connection that has not sent a whole request (a
socket that sends nothing, or half a header line, is kept forever), so each connection's
protocol is wrapped in a watch with one timer. The timer runs from the connection's start or
its last response (the keep-alive bound) and from the first byte of the next request (the
header bound); the ``track`` middleware stops it while a handler runs, which bounds the body
itself (``gateway.api.bodies``). Past ``max_connections`` a new connection is answered 503 and
closed at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.errors import error_body

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float
    keepalive_timeout_s: float
    max_connections: int


def _raw_error(status: str, message: str, code: str, extra: str = "") -> bytes:
    body = json.dumps(error_body(message, "service_unavailable", code=code)).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + body


_FULL = _raw_error(
    "503 Service Unavailable",
    "the gateway holds as many client connections as it may; try again shortly",
    "too_many_connections",
    "Retry-After: 1\r\n",
)
_HEADERS_LATE = _raw_error(
    "408 Request Timeout", "the request's headers did not arrive in time", "request_timeout"
)


class _Watch(asyncio.Protocol):
    """One client connection: the aiohttp protocol inside, and its timer outside."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._state = "idle"  # idle | headers | handling
        self._refused = False

    # asyncio.Protocol, passed on to aiohttp's handler ------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        if not self._guard.admit(transport, self):
            self._refused = True
            transport.write(_FULL)
            transport.close()
            return
        self._inner.connection_made(transport)
        self._arm(self._guard.limits.header_timeout_s, "headers")

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._state == "idle":
            self._arm(self._guard.limits.header_timeout_s, "headers")
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._refused else self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self._refused:
            return
        self._guard.forget(self._transport)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self._refused:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            self._inner.resume_writing()

    # the request's progress, told by the middleware ---------------------------------------
    def handling(self) -> None:
        self._cancel()
        self._state = "handling"

    def idle(self) -> None:
        self._arm(self._guard.limits.keepalive_timeout_s, "idle")

    def _arm(self, after_s: float, state: str) -> None:
        self._cancel()
        self._state = state
        self._timer = asyncio.get_running_loop().call_later(after_s, self._expire)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._state == "headers":
            log.info("closing a client connection: its request's headers did not arrive")
            transport.write(_HEADERS_LATE)
        transport.close()


class ConnectionGuard:
    """The live client connections of one server and their bounds."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._open: dict[asyncio.BaseTransport, _Watch] = {}

    @property
    def open(self) -> int:
        return len(self._open)

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Watch(self, factory())

    def admit(self, transport: asyncio.BaseTransport, watch: _Watch) -> bool:
        if len(self._open) >= self.limits.max_connections:
            log.warning("refusing a client connection: %d open", len(self._open))
            return False
        self._open[transport] = watch
        return True

    def forget(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None:
            self._open.pop(transport, None)

    def watch(self, transport: asyncio.BaseTransport | None) -> _Watch | None:
        return self._open.get(transport) if transport is not None else None

    def middleware(self) -> Any:
        @web.middleware
        async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
            watch = self.watch(request.transport)
            if watch is not None:
                watch.handling()
            try:
                return await handler(request)
            finally:
                if watch is not None:
                    watch.idle()

        return track


class OpenAIErrorsHandler(RequestHandler):
    """aiohttp's connection handler, but a request it cannot parse (a bad header byte, a line
    too long, broken framing) is answered with an OpenAI error body, as every other 4xx is,
    and logged as the client's mistake it is rather than as a server error."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        log.info("unparsable request from %s: %s", request.remote, exc)
        reason = exc.message if isinstance(exc, HttpProcessingError) else None
        text = str(reason or message or "the request could not be parsed").strip()
        first = text.splitlines()[0] if text else "the request could not be parsed"
        response = web.json_response(
            error_body(f"malformed HTTP request: {first}", "invalid_request_error", code=status),
            status=status,
        )
        response.force_close()
        return response


class GuardedSite(web.TCPSite):
    """A TCP site whose connections go through a ConnectionGuard, each handled by an
    OpenAIErrorsHandler."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard):
        super().__init__(runner, host, port)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        keepalive = self._guard.limits.keepalive_timeout_s

        def handler() -> asyncio.Protocol:
            # access_log=None is aiohttp's own way to log no access lines (typed Logger).
            no_access_log = cast(logging.Logger, None)
            return OpenAIErrorsHandler(
                server, loop=loop, keepalive_timeout=keepalive, access_log=no_access_log
            )

        created = await loop.create_server(
            self._guard.wrap(handler), self._host, self._port, backlog=self._backlog
        )
        self._server = created
        self._bound_port = created.sockets[0].getsockname()[1] if created.sockets else self._port
