"""The OpenAI-compatible surface: generation, model listing, and pass-through of other paths."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from aiohttp import web

from adapters.base import BackendTimeout, BackendUnreachable, StreamBroken
from gateway.errors import (
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NoBackendAvailable,
    PayloadTooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.estimate import estimate
from gateway.proxy import REQUEST_ID_HEADER, GenerationCall
from gateway.records import RequestRecord
from gateway.runtime import Runtime
from gateway.slo import resolve_slo

RUNTIME = web.AppKey("runtime", Runtime)
_OWN_PATHS = {"/v1/chat/completions": "POST", "/v1/completions": "POST", "/v1/models": "GET"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


async def read_json_object(request: web.Request, limit: int) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds {limit}")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes") from exc
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def _require(condition: bool, message: str, param: str) -> None:
    if not condition:
        raise InvalidRequest(message, param=param)


def validate_generation(body: dict[str, Any], *, chat: bool) -> tuple[str, bool, bool]:
    """Check what the gateway relies on; the engine validates the rest. Returns
    (model, stream, client asked for the usage chunk)."""
    model = body.get("model")
    _require(isinstance(model, str) and bool(model), "'model' is required (a string)", "model")
    stream = body.get("stream", False)
    _require(isinstance(stream, bool), "'stream' must be a boolean", "stream")
    if chat:
        messages = body.get("messages")
        _require(
            isinstance(messages, list) and bool(messages),
            "'messages' must be a non-empty list",
            "messages",
        )
    else:
        _require("prompt" in body, "'prompt' is required", "prompt")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        _require(
            value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0),
            f"'{name}' must be a positive integer",
            name,
        )
    options = body.get("stream_options")
    _require(
        options is None or isinstance(options, dict),
        "'stream_options' must be an object",
        "stream_options",
    )
    wants_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    _require(
        not (options and not stream), "'stream_options' needs 'stream': true", "stream_options"
    )
    assert isinstance(model, str)
    return model, stream, wants_usage


def request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _REQUEST_ID.match(given):
        return given
    return uuid.uuid4().hex


def _generation(endpoint: str, *, chat: bool) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        arrival = time.monotonic()
        runtime = request.app[RUNTIME]
        body = await read_json_object(request, runtime.settings.max_body_bytes)
        model, stream, wants_usage = validate_generation(body, chat=chat)
        services = runtime.services
        if model not in services.fleet.known_models():
            raise ModelNotFound(f"the model {model!r} does not exist", param="model")
        slo = resolve_slo(request.headers, model, runtime.config)
        record = RequestRecord(
            id=request_id(request),
            model=model,
            endpoint=endpoint,
            slo=slo,
            stream=stream,
            arrival=arrival,
            estimate=estimate(body, services.lengths, runtime.config.scheduler.output_quantile),
        )
        call = GenerationCall(endpoint=endpoint, body=body, wants_usage=wants_usage)
        return await services.proxy.generate(request, call, record)

    return handler


async def list_models(request: web.Request) -> web.Response:
    """The union of what the healthy backends serve, one card per model id."""
    cards: dict[str, Any] = {}
    for backend in request.app[RUNTIME].services.fleet:
        if backend.healthy:
            for card in backend.model_cards:
                cards.setdefault(str(card["id"]), dict(card))
    return web.json_response({"object": "list", "data": list(cards.values())})


async def passthrough(request: web.Request) -> web.Response:
    """Any other ``/v1/*`` call goes to the least-busy healthy backend serving its model."""
    if request.path in _OWN_PATHS:
        allowed = _OWN_PATHS[request.path]
        raise MethodNotAllowed(
            f"{request.method} is not allowed on {request.path}; use {allowed}",
            headers={"Allow": allowed},
        )
    runtime = request.app[RUNTIME]
    fleet = runtime.services.fleet
    raw = await request.read() if request.can_read_body else None
    model: str | None = None
    if raw:
        try:
            parsed = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("model"), str):
            model = parsed["model"]
    if model is not None and model not in fleet.known_models():
        raise ModelNotFound(f"the model {model!r} does not exist", param="model")
    candidates = fleet.healthy_for(model) if model is not None else [b for b in fleet if b.routable]
    if not candidates:
        raise NoBackendAvailable(
            "no healthy backend for this request", headers={"Retry-After": "1"}
        )
    backend = min(candidates, key=lambda b: (b.in_flight / b.config.weight, b.name))
    path = request.rel_url.raw_path_qs
    try:
        upstream = await backend.adapter.send(request.method, path, raw, runtime.timeouts())
    except BackendUnreachable as exc:
        fleet.mark_unreachable(backend.name, str(exc))
        raise UpstreamError(str(exc)) from exc
    except BackendTimeout as exc:
        raise UpstreamTimeout(str(exc)) from exc
    try:
        data = await upstream.read()
    except StreamBroken as exc:
        raise UpstreamError(f"backend {backend.name} failed: {exc}") from exc
    finally:
        upstream.close()
    return web.Response(
        status=upstream.status,
        body=data,
        content_type=upstream.content_type or None,
        headers={REQUEST_ID_HEADER: request_id(request)},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", _generation("/v1/chat/completions", chat=True))
    app.router.add_post("/v1/completions", _generation("/v1/completions", chat=False))
    app.router.add_get("/v1/models", list_models)
    app.router.add_route("*", "/v1/{tail:.*}", passthrough)
