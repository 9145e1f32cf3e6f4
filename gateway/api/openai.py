"""The OpenAI-compatible surface: generation, model listing, and pass-through of other paths."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from aiohttp import web

from adapters.base import BackendTimeout, BackendUnreachable, StreamBroken
from gateway.api.bodies import (
    parse_json_object,
    read_bytes,
    read_json_object,
    validate_generation,
)
from gateway.api.context import RUNTIME, TENANT_KEY
from gateway.api.limits import check_limits, used_tokens
from gateway.entitlements import check_model, entitled, tenant_slo
from gateway.errors import (
    ContextLengthExceeded,
    MethodNotAllowed,
    ModelNotFound,
    NoBackendAvailable,
    RateLimited,
    RouteNotFound,
    UpstreamError,
    UpstreamTimeout,
    error_body,
)
from gateway.estimate import Estimate, estimate
from gateway.fleet import Fleet
from gateway.middleware import error_response, is_openai_error
from gateway.proxy import REQUEST_ID_HEADER, GenerationCall
from gateway.records import RequestRecord
from gateway.scheduling.snapshot import Route
from gateway.slo import resolve_slo

log = logging.getLogger(__name__)

_OWN_PATHS = {"/v1/chat/completions": "POST", "/v1/completions": "POST", "/v1/models": "GET"}
SESSION_HEADER = "x-session-id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def check_context(fleet: Fleet, model: str, expected: Estimate, max_tokens: int | None) -> None:
    """Refuse at once what no backend serving the model can hold: the prompt (counted low,
    so that a prompt that might fit goes on to the engine) plus the reply's token limit."""
    limit = fleet.context_limit(model)
    if limit is None:
        return
    needed = expected.min_prompt_tokens + (max_tokens or 1)
    if needed > limit:
        raise ContextLengthExceeded(
            f"this request needs at least {needed} tokens (prompt of at least "
            f"{expected.min_prompt_tokens}, up to {max_tokens or 1} to generate), more than "
            f"any backend serving {model!r} holds ({limit})",
            param="max_tokens" if expected.min_prompt_tokens < limit else "messages",
        )


def upstream_status_error(status: int, request: web.Request) -> web.Response:
    """An engine's error answer that is not an OpenAI error body, in the OpenAI shape."""
    what = f"{request.method} {request.path}"
    if status == 404:
        return error_response(RouteNotFound(f"Not Found: {what}"))
    if status == 405:
        return error_response(MethodNotAllowed(f"Method Not Allowed: {what}"))
    if status < 500:
        body = error_body(f"the backend refused {what}", "invalid_request_error", code=status)
        return web.json_response(body, status=status)
    return error_response(UpstreamError(f"the backend failed {what}"))


def session_id(request: web.Request, body: dict[str, Any]) -> str | None:
    """The client's session: ``x-session-id``, else the OpenAI ``user`` field; placement
    scores its last backend up (scheduler.session_weight). Bounded in length; the tenant is
    part of it, so tenants' sessions never mix."""
    given = request.headers.get(SESSION_HEADER) or body.get("user")
    if not isinstance(given, str) or not given or len(given) > 256:
        return None
    return f"{request.get(TENANT_KEY) or ''}\x00{given}"


def request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _REQUEST_ID.match(given):
        return given
    return uuid.uuid4().hex


def _generation(endpoint: str, *, chat: bool) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        arrival = time.monotonic()
        runtime = request.app[RUNTIME]
        settings = runtime.settings
        body = await read_json_object(request, settings.max_body_bytes, settings.body_timeout_s)
        generation = validate_generation(body, chat=chat)
        model = generation.model
        services = runtime.services
        config = runtime.config
        tenant = request.get(TENANT_KEY)
        granted = entitled(config, tenant)
        if granted is not None:
            # Before the model's existence: a tenant learns nothing of models it may not use.
            check_model(*granted, model)
        if model not in services.fleet.known_models():
            raise ModelNotFound(f"the model {model!r} does not exist", param="model")
        slo = (
            tenant_slo(request.headers, model, config, *granted)
            if granted is not None
            else resolve_slo(request.headers, model, config)
        )
        expected = estimate(
            body,
            services.lengths,
            config.scheduler.output_quantile,
            services.tokens.chars_per_token(model),
        )
        check_context(services.fleet, model, expected, generation.max_tokens)
        record = RequestRecord(
            id=request_id(request),
            model=model,
            endpoint=endpoint,
            slo=slo,
            stream=generation.stream,
            arrival=arrival,
            estimate=expected,
            tenant=tenant,
        )
        hold = None
        if granted is not None:
            try:
                hold = await check_limits(request, runtime, *granted, model, expected)
            except RateLimited as exc:
                services.proxy.refused(record, exc, f"rate_limit_{exc.reason}")
                raise
        call = GenerationCall(
            endpoint=endpoint,
            body=body,
            wants_usage=generation.wants_usage,
            session=session_id(request, body),
            variants=tuple(Route(v.model, v.pool) for v in config.variants_of(model)),
        )
        try:
            return await services.proxy.generate(request, call, record)
        finally:
            if hold is not None:
                services.limiter.settle(hold, used_tokens(record))

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
    stripped = request.path.rstrip("/")
    if stripped != request.path and stripped in _OWN_PATHS:
        raise RouteNotFound(
            f"Not Found: {request.method} {request.path} (did you mean {stripped}?)"
        )
    if request.path in _OWN_PATHS:
        allowed = _OWN_PATHS[request.path]
        raise MethodNotAllowed(
            f"{request.method} is not allowed on {request.path}; use {allowed}",
            headers={"Allow": allowed},
        )
    runtime = request.app[RUNTIME]
    fleet = runtime.services.fleet
    settings = runtime.settings
    raw = (
        await read_bytes(request, settings.max_body_bytes, settings.body_timeout_s)
        if request.can_read_body
        else None
    )
    model: str | None = None
    if raw:
        # vLLM's other endpoints take JSON objects too: hostile bytes stop here, as for
        # generation, and the body goes on as the client sent it.
        parsed = parse_json_object(raw)
        if isinstance(parsed.get("model"), str):
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
    if upstream.status >= 400 and not is_openai_error(data):
        # The engine's own non-OpenAI error page (a text 404, say): the client gets our shape.
        log.info(
            "backend %s answered %s %s with HTTP %d",
            backend.name,
            request.method,
            request.path,
            upstream.status,
        )
        return upstream_status_error(upstream.status, request)
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
