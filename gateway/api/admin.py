"""The admin API: bearer-token protected, and closed off-loopback when no token is set."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from gateway.api.openai import RUNTIME, read_json_object
from gateway.config import GatewayConfig
from gateway.errors import (
    AdminDisabled,
    BackendExists,
    BackendNotFound,
    InvalidRequest,
    NoBackendAvailable,
    PreconditionRequired,
    RetrainRunning,
    StaleConfig,
    Unauthorized,
)
from gateway.runtime import Runtime
from gateway.state.store import StaleVersion, StoreUnavailable
from predictor.data import load_samples
from predictor.online import retrain, to_jsonl


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
            raise AdminDisabled(
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


async def predictor_info(request: web.Request) -> web.Response:
    services = request.app[RUNTIME].services
    return web.json_response(
        {"version": services.lengths_version, "samples": len(services.samples)}
    )


async def predictor_samples(request: web.Request) -> web.Response:
    """The recorded samples, in the data set's JSONL format."""
    samples = request.app[RUNTIME].services.samples.recent()
    return web.Response(text=to_jsonl(samples), content_type="application/x-ndjson")


async def predictor_retrain(request: web.Request) -> web.Response:
    """Train on recent traffic blended with the base data; swap only if it scores better."""
    runtime = request.app[RUNTIME]
    services = runtime.services
    if runtime.retraining.locked():
        raise RetrainRunning("a retrain is already running")
    async with runtime.retraining:
        base_path = runtime.settings.predictor_base_data
        base = await asyncio.to_thread(load_samples, base_path) if base_path else []
        outcome = await asyncio.to_thread(
            retrain, services.lengths, base, services.samples.recent()
        )
        if outcome.model is not None:
            services.lengths = outcome.model
            services.lengths_version = f"retrained-{int(time.time())}"
    return web.json_response({**outcome.report(), "version": services.lengths_version})


def _etag(version: int) -> str:
    return f'"{version}"'


async def get_config(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return web.Response(
        text=runtime.config.model_dump_json(indent=2),
        content_type="application/json",
        headers={"ETag": _etag(runtime.services.config_version)},
    )


async def put_config(request: web.Request) -> web.Response:
    """Replace the config: If-Match must name the current version (its ETag)."""
    runtime = request.app[RUNTIME]
    match = request.headers.get("If-Match")
    if match is None:
        raise PreconditionRequired(
            "If-Match is required: send the ETag of the config you edited", param="If-Match"
        )
    try:
        expected = int(match.strip().strip('"'))
    except ValueError:
        raise InvalidRequest(f"If-Match {match!r} is not a config ETag", param="If-Match") from None
    config = _validated(await read_json_object(request, runtime.settings.max_body_bytes))
    try:
        version = await _commit(runtime, config, expected)
    except StaleVersion as exc:
        raise StaleConfig(
            f"the config changed: it is at version {exc.current}, you edited {expected}",
            headers={"ETag": _etag(exc.current)},
        ) from None
    return web.json_response({"version": version}, headers={"ETag": _etag(version)})


def _validated(raw: Any) -> GatewayConfig:
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequest(f"invalid config: {first['msg']} at {where}", param=where) from None


async def _commit(runtime: Runtime, config: GatewayConfig, expected: int) -> int:
    """Compare-and-set the config in the store and apply it here; StaleVersion passes to the
    caller, and an unreachable store is a 503."""
    store = runtime.services.store
    assert store is not None
    try:
        version = await store.put_config(config.model_dump_json(), expected_version=expected)
    except StoreUnavailable as exc:
        raise NoBackendAvailable(f"shared state is unreachable; try again: {exc}") from None
    runtime.apply(config, version)
    return version


async def _edit_config(request: web.Request, edit: Callable[[dict[str, Any]], None]) -> int:
    """Read-modify-write of the stored config by compare-and-set; a lost race is retried on
    the winner's version. Returns the new version."""
    runtime = request.app[RUNTIME]
    store = runtime.services.store
    assert store is not None
    for _ in range(5):
        raw = runtime.config.model_dump(mode="json")
        edit(raw)
        try:
            return await _commit(runtime, _validated(raw), runtime.services.config_version)
        except StaleVersion:
            try:
                current = await store.get_config()
            except StoreUnavailable as exc:
                raise NoBackendAvailable(f"shared state is unreachable; try again: {exc}") from None
            if current is not None:
                runtime.apply(GatewayConfig.model_validate_json(current.payload), current.version)
    raise StaleConfig("the config kept changing under this edit; try again")


def _backend_row(request: web.Request, name: str) -> dict[str, Any]:
    rows = {row["name"]: row for row in backend_stats(request)}
    return rows.get(name, {"name": name})


async def list_backends(request: web.Request) -> web.Response:
    return web.json_response({"backends": backend_stats(request)})


async def add_backend(request: web.Request) -> web.Response:
    body = await read_json_object(request, request.app[RUNTIME].settings.max_body_bytes)

    def edit(raw: dict[str, Any]) -> None:
        if any(b["name"] == body.get("name") for b in raw["backends"]):
            raise BackendExists(f"backend {body.get('name')!r} exists", param="name")
        raw["backends"].append(body)

    version = await _edit_config(request, edit)
    return web.json_response(
        {"backend": _backend_row(request, str(body["name"])), "version": version}, status=201
    )


async def patch_backend(request: web.Request) -> web.Response:
    """Change a backend's settings: its URL, bound, weight, or the models it is expected to
    serve (it takes a model's traffic only once its own /v1/models lists that model)."""
    name = request.match_info["name"]
    body = await read_json_object(request, request.app[RUNTIME].settings.max_body_bytes)
    if "name" in body and body["name"] != name:
        raise InvalidRequest("a backend cannot be renamed", param="name")

    def edit(raw: dict[str, Any]) -> None:
        for backend in raw["backends"]:
            if backend["name"] == name:
                backend.update(body)
                return
        raise BackendNotFound(f"no backend {name!r}", param="name")

    version = await _edit_config(request, edit)
    return web.json_response({"backend": _backend_row(request, name), "version": version})


async def delete_backend(request: web.Request) -> web.Response:
    """Remove a backend: it takes no new requests, finishes those in flight, then leaves."""
    name = request.match_info["name"]

    def edit(raw: dict[str, Any]) -> None:
        kept = [b for b in raw["backends"] if b["name"] != name]
        if len(kept) == len(raw["backends"]):
            raise BackendNotFound(f"no backend {name!r}", param="name")
        raw["backends"] = kept

    version = await _edit_config(request, edit)
    return web.json_response({"draining": name, "version": version}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/backends", list_backends)
    app.router.add_post("/admin/backends", add_backend)
    app.router.add_patch("/admin/backends/{name}", patch_backend)
    app.router.add_delete("/admin/backends/{name}", delete_backend)
    app.router.add_get("/admin/config", get_config)
    app.router.add_put("/admin/config", put_config)
    app.router.add_get("/admin/stats", stats)
    app.router.add_get("/admin/predictor", predictor_info)
    app.router.add_get("/admin/predictor/samples", predictor_samples)
    app.router.add_post("/admin/predictor/retrain", predictor_retrain)
