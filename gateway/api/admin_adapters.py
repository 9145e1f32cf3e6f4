"""Admin routes for LoRA adapters: the ones the gateway may load, where each is resident on
the backends, and pinning one to a pool (loaded only there, never evicted there)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.admin_config import Method, delete_entry, edit_config, put_entry, read_body
from gateway.api.context import RUNTIME
from gateway.config import AdapterConfig
from gateway.errors import AdapterNotFound, InvalidRequest


def adapters_view(request: web.Request) -> dict[str, Any]:
    runtime = request.app[RUNTIME]
    fleet = runtime.services.fleet
    book = fleet.adapters
    where: dict[str, list[str]] = {}
    loading: dict[str, list[str]] = {}
    for backend in fleet:
        for name in book.resident(backend):
            where.setdefault(name, []).append(backend.name)
        for name in book.slots(backend).loading:
            loading.setdefault(name, []).append(backend.name)
    return {
        name: {
            **entry.model_dump(mode="json"),
            "resident_on": sorted(where.get(name, [])),
            "loading_on": sorted(loading.get(name, [])),
            "load_s": book.load_s(name),
        }
        for name, entry in sorted(runtime.config.adapters.items())
    }


async def list_adapters(request: web.Request) -> web.Response:
    return web.json_response({"adapters": adapters_view(request)})


async def put_adapter(request: web.Request) -> web.Response:
    """Create or replace an adapter the gateway may load (base model, path, pool)."""
    name, _, version, created = await put_entry(request, "adapters", AdapterConfig, "adapter")
    body = adapters_view(request).get(name, {})
    return web.json_response(
        {"name": name, "adapter": body, "version": version}, status=201 if created else 200
    )


async def delete_adapter(request: web.Request) -> web.Response:
    """Forget an adapter: the gateway loads it no more (where it is resident, it stays)."""
    return await delete_entry(
        request, "adapters", lambda name: AdapterNotFound(f"no adapter {name!r}", param="name")
    )


async def _set_pool(request: web.Request, pool: str | None) -> web.Response:
    name = request.match_info["name"]

    def edit(raw: dict[str, Any]) -> None:
        if name not in raw["adapters"]:
            raise AdapterNotFound(f"no adapter {name!r}", param="name")
        raw["adapters"][name]["pool"] = pool

    version = await edit_config(request, edit)
    return web.json_response(
        {"name": name, "adapter": adapters_view(request)[name], "version": version}
    )


async def pin_adapter(request: web.Request) -> web.Response:
    """Pin an adapter to a pool: ``{"pool": NAME}``."""
    body = await read_body(request)
    pool = body.get("pool")
    if not isinstance(pool, str) or not pool or set(body) != {"pool"}:
        raise InvalidRequest('the body must be {"pool": "<pool name>"}', param="pool")
    return await _set_pool(request, pool)


async def unpin_adapter(request: web.Request) -> web.Response:
    return await _set_pool(request, None)


ROUTES: list[tuple[Method, str, Any]] = [
    ("GET", "/admin/adapters", list_adapters),
    ("PUT", "/admin/adapters/{name}", put_adapter),
    ("DELETE", "/admin/adapters/{name}", delete_adapter),
    ("PUT", "/admin/adapters/{name}/pin", pin_adapter),
    ("DELETE", "/admin/adapters/{name}/pin", unpin_adapter),
]
