"""Admin routes that change the shared config: the whole document, backends, SLO classes.

Every write is a compare-and-set on the stored version, so concurrent operators and replicas
cannot overwrite each other unseen; each replica then swaps in the new snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Optional, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from gateway.api.bodies import read_json_object
from gateway.api.context import RUNTIME
from gateway.api.stats import backend_stats
from gateway.config import BackendConfig, GatewayConfig, SloClass
from gateway.errors import (
    BackendExists,
    BackendNotFound,
    ClassInUse,
    ClassNotFound,
    InvalidRequest,
    PreconditionRequired,
    SharedStateUnavailable,
    SluiceError,
    StaleConfig,
)
from gateway.runtime import Runtime
from gateway.scheduling.macro import with_layout
from gateway.state.store import StaleVersion, StoreUnavailable

# A backend patch: any of a backend's fields but its name, each optional.
BackendPatch: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "BackendPatch",
    __config__=ConfigDict(extra="forbid"),
    **{
        name: (Optional[field.annotation], None)  # noqa: UP045 (a runtime type expression)
        for name, field in BackendConfig.model_fields.items()
        if name != "name"
    },
)


def etag(version: int) -> str:
    return f'"{version}"'


def invalid(exc: ValidationError, what: str) -> InvalidRequest:
    """The first validation error, as a 400 whose param names the field."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or None
    return InvalidRequest(f"invalid {what}: {first['msg']} at {where}", param=where)


def validated(raw: Any) -> GatewayConfig:
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise invalid(exc, "config") from None


async def _commit(runtime: Runtime, config: GatewayConfig, expected: int) -> int:
    """Compare-and-set the config in the store and apply it here; StaleVersion passes to the
    caller, and an unreachable store is a 503."""
    store = runtime.services.store
    assert store is not None
    # Macro instances follow the backends by the mitosis rules, from the layout the new
    # config names or, when it names none, from the one in force.
    config = with_layout(config, config.macro_instances or runtime.config.macro_instances)
    try:
        version = await store.put_config(config.model_dump_json(), expected_version=expected)
    except StoreUnavailable as exc:
        raise SharedStateUnavailable(f"shared state is unreachable; try again: {exc}") from None
    runtime.apply(config, version)
    return version


async def edit_config(request: web.Request, edit: Callable[[dict[str, Any]], None]) -> int:
    """Read-modify-write of the stored config by compare-and-set; a lost race is retried on
    the winner's version. Returns the new version."""
    runtime = request.app[RUNTIME]
    store = runtime.services.store
    assert store is not None
    for _ in range(5):
        raw = runtime.config.model_dump(mode="json")
        edit(raw)
        try:
            return await _commit(runtime, validated(raw), runtime.services.config_version)
        except StaleVersion:
            try:
                current = await store.get_config()
            except StoreUnavailable as exc:
                raise SharedStateUnavailable(
                    f"shared state is unreachable; try again: {exc}"
                ) from None
            if current is not None:
                runtime.apply(GatewayConfig.model_validate_json(current.payload), current.version)
    raise StaleConfig("the config kept changing under this edit; try again")


async def read_body(request: web.Request) -> dict[str, Any]:
    settings = request.app[RUNTIME].settings
    return await read_json_object(request, settings.max_body_bytes, settings.body_timeout_s)


# --- the whole config -----------------------------------------------------------------


async def get_config(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return web.Response(
        text=runtime.config.model_dump_json(indent=2),
        content_type="application/json",
        headers={"ETag": etag(runtime.services.config_version)},
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
    config = validated(await read_body(request))
    try:
        version = await _commit(runtime, config, expected)
    except StaleVersion as exc:
        raise StaleConfig(
            f"the config changed: it is at version {exc.current}, you edited {expected}",
            headers={"ETag": etag(exc.current)},
        ) from None
    return web.json_response({"version": version}, headers={"ETag": etag(version)})


# --- backends -------------------------------------------------------------------------


def _backend_row(request: web.Request, name: str) -> dict[str, Any]:
    rows = {row["name"]: row for row in backend_stats(request)}
    return rows.get(name, {"name": name})


async def list_backends(request: web.Request) -> web.Response:
    return web.json_response({"backends": backend_stats(request)})


async def add_backend(request: web.Request) -> web.Response:
    body = await read_body(request)

    def edit(raw: dict[str, Any]) -> None:
        if any(b["name"] == body.get("name") for b in raw["backends"]):
            raise BackendExists(f"backend {body.get('name')!r} exists", param="name")
        raw["backends"].append(body)

    version = await edit_config(request, edit)
    return web.json_response(
        {"backend": _backend_row(request, str(body["name"])), "version": version}, status=201
    )


async def patch_backend(request: web.Request) -> web.Response:
    """Change a backend's settings: URL, bound, weight, state (active, draining, disabled),
    pool, or the models it is meant to serve (retargeting: it takes a model's traffic only
    once its own /v1/models lists that model)."""
    name = request.match_info["name"]
    body = await read_body(request)
    if "name" in body:
        raise InvalidRequest("a backend cannot be renamed", param="name")
    try:
        patch = BackendPatch.model_validate(body).model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        raise invalid(exc, "backend patch") from None

    def edit(raw: dict[str, Any]) -> None:
        for backend in raw["backends"]:
            if backend["name"] == name:
                backend.update(patch)
                return
        raise BackendNotFound(f"no backend {name!r}", param="name")

    version = await edit_config(request, edit)
    return web.json_response({"backend": _backend_row(request, name), "version": version})


async def delete_backend(request: web.Request) -> web.Response:
    """Remove a backend: it takes no new requests, finishes those in flight, then leaves."""
    name = request.match_info["name"]

    def edit(raw: dict[str, Any]) -> None:
        kept = [b for b in raw["backends"] if b["name"] != name]
        if len(kept) == len(raw["backends"]):
            raise BackendNotFound(f"no backend {name!r}", param="name")
        raw["backends"] = kept

    version = await edit_config(request, edit)
    return web.json_response({"draining": name, "version": version}, status=202)


# --- SLO classes ----------------------------------------------------------------------


async def list_classes(request: web.Request) -> web.Response:
    config = request.app[RUNTIME].config
    return web.json_response(
        {
            "default_class": config.default_class,
            "slo_classes": {n: c.model_dump(mode="json") for n, c in config.slo_classes.items()},
        }
    )


Entry = TypeVar("Entry", bound=BaseModel)


async def put_entry(
    request: web.Request, section: str, kind: type[Entry], what: str
) -> tuple[str, Entry, int, bool]:
    """Create or replace the entry named in the path in one of the config's named sections
    (``slo_classes``, ``pools``). Returns its name, the validated entry, the new version,
    and whether it was created."""
    name = request.match_info["name"]
    try:
        entry = kind.model_validate(await read_body(request))
    except ValidationError as exc:
        raise invalid(exc, what) from None
    created = name not in getattr(request.app[RUNTIME].config, section)

    def edit(raw: dict[str, Any]) -> None:
        raw[section][name] = entry.model_dump(mode="json")

    return name, entry, await edit_config(request, edit), created


async def delete_entry(
    request: web.Request, section: str, missing: Callable[[str], SluiceError]
) -> web.Response:
    """Remove the entry named in the path from one of the config's named sections
    (``pools``, ``tenants``); ``missing`` makes the error when there is none."""
    name = request.match_info["name"]

    def edit(raw: dict[str, Any]) -> None:
        if name not in raw[section]:
            raise missing(name)
        del raw[section][name]

    version = await edit_config(request, edit)
    return web.json_response({"deleted": name, "version": version})


async def put_class(request: web.Request) -> web.Response:
    """Create or replace one SLO class."""
    name, slo_class, version, created = await put_entry(
        request, "slo_classes", SloClass, "SLO class"
    )
    return web.json_response(
        {"name": name, "slo_class": slo_class.model_dump(mode="json"), "version": version},
        status=201 if created else 200,
    )


async def delete_class(request: web.Request) -> web.Response:
    """Remove an SLO class no default names."""
    name = request.match_info["name"]

    def edit(raw: dict[str, Any]) -> None:
        if name not in raw["slo_classes"]:
            raise ClassNotFound(f"no SLO class {name!r}", param="name")
        users = [m["name"] for m in raw["models"] if m.get("default_class") == name]
        if raw["default_class"] == name or users:
            what = "the default class" if not users else f"the default of {users}"
            raise ClassInUse(f"SLO class {name!r} is {what}", param="name")
        del raw["slo_classes"][name]

    version = await edit_config(request, edit)
    return web.json_response({"deleted": name, "version": version})


Method = Literal["GET", "PUT", "POST", "PATCH", "DELETE"]
ROUTES: list[tuple[Method, str, Any]] = [
    ("GET", "/admin/config", get_config),
    ("PUT", "/admin/config", put_config),
    ("GET", "/admin/backends", list_backends),
    ("POST", "/admin/backends", add_backend),
    ("PATCH", "/admin/backends/{name}", patch_backend),
    ("DELETE", "/admin/backends/{name}", delete_backend),
    ("GET", "/admin/slo-classes", list_classes),
    ("PUT", "/admin/slo-classes/{name}", put_class),
    ("DELETE", "/admin/slo-classes/{name}", delete_class),
]
