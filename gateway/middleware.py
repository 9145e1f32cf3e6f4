"""Every failure becomes an OpenAI error body with the right status."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import (
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
    SluiceError,
    error_body,
)

log = logging.getLogger(__name__)

_BY_STATUS: dict[int, type[SluiceError]] = {
    404: RouteNotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


def error_response(exc: SluiceError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers=exc.headers)


def is_openai_error(data: bytes) -> bool:
    """An OpenAI error body (``{"error": ...}``, or vLLM's ``{"object": "error", ...}``)."""
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(parsed, dict) and ("error" in parsed or parsed.get("object") == "error")


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SluiceError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = _BY_STATUS.get(exc.status)
        message = f"{exc.reason}: {request.method} {request.path}"
        if kind is not None:
            return error_response(kind(message))
        return web.json_response(
            error_body(message, "invalid_request_error", code=exc.status), status=exc.status
        )
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        # The client went away before its answer: an ordinary event, and no one to tell.
        log.info("client of %s %s disconnected before its answer", request.method, request.path)
        return web.Response(status=499)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response(
            error_body("internal gateway error", "internal_error", code="internal_error"),
            status=500,
        )
