"""Admin routes for client keys: create (the secret is in this answer only), list, rotate,
revoke. Records go to the shared store; every replica mirrors them within a config poll."""

from __future__ import annotations

import time
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.api.admin_config import invalid, read_body
from gateway.api.context import RUNTIME
from gateway.errors import KeyNotFound, SharedStateUnavailable
from gateway.keys import KeyRecord, new_key
from gateway.runtime import Runtime
from gateway.state.store import StoreUnavailable

_Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class NewKey(BaseModel):
    """A key to create: the tenant it belongs to, and a name for people."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: _Name
    name: Annotated[str, Field(max_length=200)] = ""


class Rotation(BaseModel):
    """How long the old key keeps working after its replacement is made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grace_s: Annotated[float, Field(ge=0, le=30 * 24 * 3600)] = 0.0


async def _write(runtime: Runtime, record: KeyRecord) -> None:
    store = runtime.services.store
    assert store is not None
    try:
        await store.put_key(record.id, record.to_json())
    except StoreUnavailable as exc:
        raise SharedStateUnavailable(f"client keys cannot be written now: {exc}") from exc
    await runtime.refresh_keys(store)


def _record(runtime: Runtime, key_id: str) -> KeyRecord:
    record = runtime.keys.get(key_id)
    if record is None:
        raise KeyNotFound(f"no client key {key_id!r}", param="id")
    return record


async def _validated(request: web.Request, model: type[NewKey | Rotation]) -> Any:
    raw = await read_body(request) if request.can_read_body else {}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise invalid(exc, "body") from None


async def _created(runtime: Runtime, tenant: str, name: str) -> dict[str, Any]:
    key, record = new_key(tenant, name)
    await _write(runtime, record)
    return {**record.public(), "key": key}


async def list_keys(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return web.json_response({"keys": [r.public() for r in runtime.keys.records()]})


async def create_key(request: web.Request) -> web.Response:
    body: NewKey = await _validated(request, NewKey)
    return web.json_response(
        await _created(request.app[RUNTIME], body.tenant, body.name), status=201
    )


async def rotate_key(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    old = _record(runtime, request.match_info["id"])
    body: Rotation = await _validated(request, Rotation)
    created = await _created(runtime, old.tenant, old.name)
    if old.active:
        await _write(runtime, old.revoked(time.time() + body.grace_s))
    return web.json_response({**created, "replaces": old.id}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    record = _record(runtime, request.match_info["id"])
    if record.active:
        record = record.revoked(time.time())
        await _write(runtime, record)
    return web.json_response(record.public())


ROUTES = [
    ("GET", "/admin/keys", list_keys),
    ("POST", "/admin/keys", create_key),
    ("POST", "/admin/keys/{id}/rotate", rotate_key),
    ("DELETE", "/admin/keys/{id}", revoke_key),
]
