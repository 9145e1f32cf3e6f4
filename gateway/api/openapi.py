"""The OpenAPI 3.1 document of the admin API, served at /admin/openapi.json.

Request bodies are the same pydantic models that validate them, so the document cannot
drift from what the server accepts; a test checks that every admin route is described.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.api.admin_config import BackendPatch
from gateway.api.admin_keys import NewKey, Rotation
from gateway.config import (
    AdapterConfig,
    BackendConfig,
    GatewayConfig,
    PoolConfig,
    SloClass,
    TenantConfig,
)

_REF = "#/components/schemas/{model}"

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "integer", "null"]},
            },
        }
    },
}
_OBJECT: dict[str, Any] = {"type": "object"}
_VERSIONED = {
    "type": "object",
    "required": ["version"],
    "properties": {"version": {"type": "integer", "description": "The new config version"}},
}


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": _REF.format(model=model.__name__)}


# (method, path) -> summary, request body schema or None, {status: description}, success body
_OPERATIONS: dict[tuple[str, str], tuple[str, dict[str, Any] | None, dict[int, str]]] = {
    ("get", "/admin/config"): (
        "The current config; its version is the ETag",
        None,
        {200: "The config"},
    ),
    ("put", "/admin/config"): (
        "Replace the config; If-Match must carry the ETag it was edited from",
        _schema(GatewayConfig),
        {
            200: "Written; the new ETag is returned",
            400: "Invalid config",
            409: "Stale If-Match: the config changed meanwhile",
            428: "If-Match missing",
            503: "Shared state unreachable",
        },
    ),
    ("get", "/admin/backends"): ("Backends, their state, load and models", None, {200: "Rows"}),
    ("post", "/admin/backends"): (
        "Add a backend",
        _schema(BackendConfig),
        {201: "Added", 400: "Invalid backend", 409: "Name taken", 503: "Shared state away"},
    ),
    ("patch", "/admin/backends/{name}"): (
        "Change a backend: URL, bound, weight, state, pool, or models (retarget)",
        _schema(BackendPatch),
        {200: "Changed", 400: "Invalid change", 404: "No such backend", 503: "Shared state away"},
    ),
    ("delete", "/admin/backends/{name}"): (
        "Remove a backend: it drains (finishes what it has), then leaves",
        None,
        {202: "Draining", 404: "No such backend", 503: "Shared state away"},
    ),
    ("get", "/admin/slo-classes"): ("SLO classes and the default", None, {200: "Classes"}),
    ("put", "/admin/slo-classes/{name}"): (
        "Create or replace an SLO class",
        _schema(SloClass),
        {200: "Replaced", 201: "Created", 400: "Invalid class", 503: "Shared state away"},
    ),
    ("delete", "/admin/slo-classes/{name}"): (
        "Remove an SLO class that no default names",
        None,
        {200: "Removed", 404: "No such class", 409: "A default names it"},
    ),
    ("get", "/admin/pools"): (
        "Pools: bounds, macro instances and the active backend of each, scale recommendation",
        None,
        {200: "Pools"},
    ),
    ("put", "/admin/pools/{name}"): (
        "Create or replace a pool's bounds and webhook; its macro instances are re-laid",
        _schema(PoolConfig),
        {200: "Replaced", 201: "Created", 400: "Invalid pool", 503: "Shared state away"},
    ),
    ("delete", "/admin/pools/{name}"): (
        "Drop a pool's settings; its backends stay, under the default bounds",
        None,
        {200: "Removed", 404: "No settings for that pool", 503: "Shared state away"},
    ),
    ("get", "/admin/adapters"): (
        "LoRA adapters the gateway may load, where each is resident or loading",
        None,
        {200: "Adapters"},
    ),
    ("put", "/admin/adapters/{name}"): (
        "Create or replace an adapter: its base model, path, expected load time, pool",
        _schema(AdapterConfig),
        {200: "Replaced", 201: "Created", 400: "Invalid adapter", 503: "Shared state away"},
    ),
    ("delete", "/admin/adapters/{name}"): (
        "Forget an adapter: the gateway loads it no more",
        None,
        {200: "Removed", 404: "No such adapter", 503: "Shared state away"},
    ),
    ("put", "/admin/adapters/{name}/pin"): (
        "Pin an adapter to a pool: loaded only there, never evicted there",
        {"type": "object", "properties": {"pool": {"type": "string"}}, "required": ["pool"]},
        {200: "Pinned", 400: "Invalid body", 404: "No such adapter", 503: "Shared state away"},
    ),
    ("delete", "/admin/adapters/{name}/pin"): (
        "Unpin an adapter: it may be loaded on any backend of its base model",
        None,
        {200: "Unpinned", 404: "No such adapter", 503: "Shared state away"},
    ),
    ("get", "/admin/stats"): (
        "Queues, per-backend load and latency-model estimates",
        None,
        {200: "Stats"},
    ),
    ("get", "/admin/predictor"): (
        "The length model's version and sample count",
        None,
        {200: "Info"},
    ),
    ("get", "/admin/predictor/samples"): (
        "Recorded samples, in the data set's JSONL format",
        None,
        {200: "JSONL"},
    ),
    ("post", "/admin/predictor/retrain"): (
        "Retrain on recent traffic; swap only if it ranks better on held-out recent traffic",
        None,
        {200: "The comparison, and the version now serving", 409: "A retrain is running"},
    ),
    ("get", "/admin/keys"): ("Client keys (never their secrets)", None, {200: "Keys"}),
    ("post", "/admin/keys"): (
        "Create a client key for a tenant; the answer is the only place its secret appears",
        _schema(NewKey),
        {201: "Created: `key` is the secret", 400: "Invalid body", 503: "Shared state away"},
    ),
    ("post", "/admin/keys/{id}/rotate"): (
        "Replace a key with a new one for the same tenant; the old one works grace_s longer",
        _schema(Rotation),
        {201: "The new key", 400: "Invalid body", 404: "No such key", 503: "Shared state away"},
    ),
    ("delete", "/admin/keys/{id}"): (
        "Revoke a key: every replica refuses it within the config-poll interval",
        None,
        {200: "Revoked", 404: "No such key", 503: "Shared state away"},
    ),
    ("get", "/admin/tenants"): (
        "Tenants (with an entry, a key, or requests here): entry, usage against its limits, "
        "share of the fleet received against its fair share",
        None,
        {200: "Tenants"},
    ),
    ("get", "/admin/tenants/{name}"): (
        "One tenant's entry, usage and share",
        None,
        {200: "The tenant", 404: "No such tenant"},
    ),
    ("put", "/admin/tenants/{name}"): (
        "Create or replace a tenant's entitlements, limits and weight",
        _schema(TenantConfig),
        {200: "Replaced", 201: "Created", 400: "Invalid tenant", 503: "Shared state away"},
    ),
    ("delete", "/admin/tenants/{name}"): (
        "Drop a tenant's entry: its keys stay, its requests are no longer restricted",
        None,
        {200: "Removed", 404: "No entry for that tenant", 503: "Shared state away"},
    ),
    ("get", "/admin/openapi.json"): ("This document", None, {200: "OpenAPI 3.1"}),
}


def _package_version() -> str:
    try:
        return version("sluice-gateway")
    except PackageNotFoundError:
        return "0"


def _operation(
    method: str, path: str, summary: str, body: dict[str, Any] | None, responses: dict[int, str]
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "operationId": f"{method}_{path.removeprefix('/admin/').replace('/', '_')}".translate(
            str.maketrans("", "", "{}.-")
        ),
        "responses": {},
    }
    for parameter in ("name", "id"):
        if f"{{{parameter}}}" in path:
            operation["parameters"] = [
                {"name": parameter, "in": "path", "required": True, "schema": {"type": "string"}}
            ]
    if method == "put" and path == "/admin/config":
        operation.setdefault("parameters", []).append(
            {"name": "If-Match", "in": "header", "required": True, "schema": {"type": "string"}}
        )
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    for status, description in responses.items():
        schema = _ERROR if status >= 400 else (_VERSIONED if method != "get" else _OBJECT)
        operation["responses"][str(status)] = {
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    operation["responses"]["401"] = {
        "description": "Missing or wrong bearer token",
        "content": {"application/json": {"schema": _ERROR}},
    }
    return operation


@cache
def document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [
            (m, "validation")
            for m in (
                GatewayConfig,
                BackendConfig,
                BackendPatch,
                SloClass,
                PoolConfig,
                AdapterConfig,
                NewKey,
                Rotation,
                TenantConfig,
            )
        ],
        ref_template=_REF,
    )
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), (summary, body, responses) in _OPERATIONS.items():
        paths.setdefault(path, {})[method] = _operation(method, path, summary, body, responses)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sluice admin API",
            "version": _package_version(),
            "description": "Change the fleet, SLO classes and config of a Sluice gateway at "
            "run time; every replica on the same Redis sees the change.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": {**defs.get("$defs", {}), "Error": _ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def described() -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in the document."""
    return {(method.upper(), path) for method, path in _OPERATIONS}
