"""``sluice admin``: the admin REST API from the command line.

Every command is one or two HTTP calls to a running gateway (``--url``, default
``$SLUICE_ADMIN_URL`` or http://127.0.0.1:8080) with ``--token`` (default
``$SLUICE_ADMIN_TOKEN``). It prints the answer as JSON; an error answer is printed to stderr
and exits 1, a gateway that cannot be reached exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

DEFAULT_URL = "http://127.0.0.1:8080"


class AdminError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message") or str(body)
        super().__init__(f"{status} {error.get('code') or ''}: {message}".replace(" :", ":"))


def add_commands(commands: Any) -> None:
    admin = commands.add_parser("admin", help="change a running gateway through its admin API")
    admin.add_argument("--url", default=os.environ.get("SLUICE_ADMIN_URL", DEFAULT_URL))
    admin.add_argument("--token", default=os.environ.get("SLUICE_ADMIN_TOKEN"))
    admin.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    groups = admin.add_subparsers(dest="group", required=True)

    config = groups.add_parser("config", help="the whole config").add_subparsers(
        dest="action", required=True
    )
    config.add_parser("get", help="print the config and its ETag")
    put = config.add_parser("put", help="replace the config from a YAML or JSON file")
    put.add_argument("file", type=Path)
    put.add_argument("--if-match", required=True, help="the ETag of the config you edited")

    backends = groups.add_parser("backends", help="backends").add_subparsers(
        dest="action", required=True
    )
    backends.add_parser("list")
    add = backends.add_parser("add", help="add a backend")
    add.add_argument("name")
    add.add_argument("backend_url", metavar="URL", help="the backend's base URL")
    _backend_options(add)
    patch = backends.add_parser("set", help="change a backend's settings")
    patch.add_argument("name")
    _backend_options(patch)
    patch.add_argument("--url", dest="backend_url")
    for verb, state in (("drain", "draining"), ("disable", "disabled"), ("activate", "active")):
        parser = backends.add_parser(verb, help=f"set the backend {state}")
        parser.add_argument("name")
        parser.set_defaults(state=state)
    retarget = backends.add_parser("retarget", help="move a backend to other models or a pool")
    retarget.add_argument("name")
    retarget.add_argument("--model", action="append", dest="models", default=None)
    retarget.add_argument("--pool")
    remove = backends.add_parser("remove", help="drain a backend, then remove it")
    remove.add_argument("name")

    classes = groups.add_parser("classes", help="SLO classes").add_subparsers(
        dest="action", required=True
    )
    classes.add_parser("list")
    set_class = classes.add_parser("set", help="create or replace an SLO class")
    set_class.add_argument("name")
    set_class.add_argument("--ttft-ms", type=float, required=True)
    set_class.add_argument("--tpot-ms", type=float, required=True)
    set_class.add_argument("--best-effort", action="store_true", help="serve, never reject")
    set_class.add_argument(
        "--degrade",
        choices=("never", "when_unattainable", "prefer_fast"),
        default="never",
        help="may its requests go to a variant of their model under pressure",
    )
    delete_class = classes.add_parser("delete")
    delete_class.add_argument("name")

    pools = groups.add_parser("pools", help="pools and their macro instances").add_subparsers(
        dest="action", required=True
    )
    pools.add_parser("list", help="instances, active backends, scale recommendations")
    set_pool = pools.add_parser("set", help="set a pool's macro-instance bounds")
    set_pool.add_argument("name")
    set_pool.add_argument("--min-size", type=int, required=True)
    set_pool.add_argument("--max-size", type=int, required=True)
    set_pool.add_argument("--webhook", help="URL called when the recommendation changes")
    delete_pool = pools.add_parser("delete", help="drop a pool's settings")
    delete_pool.add_argument("name")

    adapters = groups.add_parser("adapters", help="LoRA adapters").add_subparsers(
        dest="action", required=True
    )
    adapters.add_parser("list", help="every adapter, where it is resident or loading")
    set_adapter = adapters.add_parser("set", help="create or replace an adapter")
    set_adapter.add_argument("name")
    set_adapter.add_argument("--base", required=True, help="the model it adapts")
    set_adapter.add_argument("--path", required=True, help="its lora_path, as vLLM sees it")
    set_adapter.add_argument("--load-ms", type=float, help="expected load time, until measured")
    set_adapter.add_argument("--pool", help="pin it to this pool")
    adapters.add_parser("delete", help="forget an adapter").add_argument("name")
    pin = adapters.add_parser("pin", help="load it only in this pool, never evicted there")
    pin.add_argument("name")
    pin.add_argument("--pool", required=True)
    adapters.add_parser("unpin").add_argument("name")

    keys = groups.add_parser("keys", help="client API keys").add_subparsers(
        dest="action", required=True
    )
    keys.add_parser("list", help="every key's id, tenant and state (never the secret)")
    create = keys.add_parser("create", help="create a key; its secret is printed this once")
    create.add_argument("tenant")
    create.add_argument("--name", default="", help="a note for people")
    rotate = keys.add_parser("rotate", help="replace a key; the old one works --grace-s longer")
    rotate.add_argument("id")
    rotate.add_argument("--grace-s", type=float, default=0.0)
    revoke = keys.add_parser("revoke", help="revoke a key on every replica")
    revoke.add_argument("id")

    tenants = groups.add_parser(
        "tenants", help="tenants: entitlements, limits, weight, usage and share"
    ).add_subparsers(dest="action", required=True)
    tenants.add_parser("list", help="every tenant's entry, usage against limits, and share")
    tenants.add_parser("show").add_argument("name")
    set_tenant = tenants.add_parser(
        "set", help="create or replace a tenant's entry (options over --file's fields)"
    )
    set_tenant.add_argument("name")
    set_tenant.add_argument("--file", type=Path, help="the entry as YAML or JSON")
    set_tenant.add_argument("--weight", type=float)
    set_tenant.add_argument("--requests-per-second", type=float)
    set_tenant.add_argument("--tokens-per-minute", type=int)
    set_tenant.add_argument("--max-concurrent", type=int)
    set_tenant.add_argument("--models", nargs="+")
    set_tenant.add_argument("--classes", nargs="+")
    set_tenant.add_argument("--default-class")
    set_tenant.add_argument("--min-ttft-ms", type=float)
    set_tenant.add_argument("--min-tpot-ms", type=float)
    set_tenant.add_argument("--on-excess", choices=["refuse", "clamp"])
    tenants.add_parser("remove", help="drop a tenant's entry (its keys stay)").add_argument("name")

    groups.add_parser("stats", help="queues, backends, latency models")
    predictor = groups.add_parser("predictor", help="the length model").add_subparsers(
        dest="action", required=True
    )
    predictor.add_parser("info")
    predictor.add_parser("retrain")
    groups.add_parser("openapi", help="print the admin API's OpenAPI document")


def _backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-in-flight", type=int)
    parser.add_argument("--weight", type=float)
    parser.add_argument("--model", action="append", dest="models", default=None)
    parser.add_argument("--pool")
    parser.add_argument("--kv-capacity-tokens", type=int)
    parser.add_argument("--api-key")
    parser.add_argument("--priority-scheduling", action="store_true", default=None)


def _backend_fields(args: argparse.Namespace) -> dict[str, Any]:
    names = ("max_in_flight", "weight", "models", "pool", "kv_capacity_tokens", "api_key")
    fields = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if getattr(args, "priority_scheduling", None):
        fields["priority_scheduling"] = True
    if getattr(args, "backend_url", None) is not None:
        fields["url"] = args.backend_url
    return fields


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def _tenant_entry(args: argparse.Namespace) -> dict[str, Any]:
    entry: dict[str, Any] = dict(_read(args.file) or {}) if args.file else {}
    for field in ("weight", "models", "classes", "default_class", "min_ttft_ms", "min_tpot_ms"):
        if getattr(args, field) is not None:
            entry[field] = getattr(args, field)
    if args.on_excess is not None:
        entry["on_excess"] = args.on_excess
    limits = dict(entry.get("limits") or {})
    for field in ("requests_per_second", "tokens_per_minute", "max_concurrent"):
        if getattr(args, field) is not None:
            limits[field] = getattr(args, field)
    if limits:
        entry["limits"] = limits
    return entry


def _request(args: argparse.Namespace) -> tuple[str, str, Any, dict[str, str]]:
    """The HTTP call a command makes: method, path, JSON body, extra headers."""
    group, action = args.group, getattr(args, "action", None)
    if group == "config":
        if action == "get":
            return "GET", "/admin/config", None, {}
        return "PUT", "/admin/config", _read(args.file), {"If-Match": args.if_match}
    if group == "backends":
        if action == "list":
            return "GET", "/admin/backends", None, {}
        if action == "add":
            return "POST", "/admin/backends", {"name": args.name}, {}
        path = f"/admin/backends/{args.name}"
        if action == "remove":
            return "DELETE", path, None, {}
        if action in ("drain", "disable", "activate"):
            return "PATCH", path, {"state": args.state}, {}
        return "PATCH", path, {}, {}
    if group == "classes":
        if action == "list":
            return "GET", "/admin/slo-classes", None, {}
        path = f"/admin/slo-classes/{args.name}"
        if action == "delete":
            return "DELETE", path, None, {}
        body = {
            "ttft_ms": args.ttft_ms,
            "tpot_ms": args.tpot_ms,
            "on_unattainable": "best_effort" if args.best_effort else "reject",
            "degrade": args.degrade,
        }
        return "PUT", path, body, {}
    if group == "pools":
        if action == "list":
            return "GET", "/admin/pools", None, {}
        path = f"/admin/pools/{args.name}"
        if action == "delete":
            return "DELETE", path, None, {}
        body = {"min_size": args.min_size, "max_size": args.max_size}
        if args.webhook:
            body["webhook_url"] = args.webhook
        return "PUT", path, body, {}
    if group == "adapters":
        return _adapter_request(args)
    if group == "keys":
        if action == "list":
            return "GET", "/admin/keys", None, {}
        if action == "create":
            return "POST", "/admin/keys", {"tenant": args.tenant, "name": args.name}, {}
        if action == "rotate":
            return "POST", f"/admin/keys/{args.id}/rotate", {"grace_s": args.grace_s}, {}
        return "DELETE", f"/admin/keys/{args.id}", None, {}
    if group == "tenants":
        if action == "list":
            return "GET", "/admin/tenants", None, {}
        path = f"/admin/tenants/{args.name}"
        if action == "show":
            return "GET", path, None, {}
        if action == "remove":
            return "DELETE", path, None, {}
        return "PUT", path, _tenant_entry(args), {}
    if group == "predictor":
        if action == "info":
            return "GET", "/admin/predictor", None, {}
        return "POST", "/admin/predictor/retrain", None, {}
    if group == "stats":
        return "GET", "/admin/stats", None, {}
    return "GET", "/admin/openapi.json", None, {}


def _adapter_request(args: argparse.Namespace) -> tuple[str, str, Any, dict[str, str]]:
    if args.action == "list":
        return "GET", "/admin/adapters", None, {}
    path = f"/admin/adapters/{args.name}"
    if args.action == "delete":
        return "DELETE", path, None, {}
    if args.action == "pin":
        return "PUT", path + "/pin", {"pool": args.pool}, {}
    if args.action == "unpin":
        return "DELETE", path + "/pin", None, {}
    body: dict[str, Any] = {"base": args.base, "path": args.path, "pool": args.pool}
    if args.load_ms is not None:
        body["load_ms"] = args.load_ms
    return "PUT", path, body, {}


def call(args: argparse.Namespace) -> Any:
    method, path, body, headers = _request(args)
    if args.group == "backends" and args.action in ("add", "set", "retarget"):
        body = {**body, **_backend_fields(args)}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    with httpx.Client(base_url=args.url.rstrip("/"), timeout=args.timeout) as client:
        response = client.request(method, path, json=body, headers=headers)
    try:
        answer = response.json()
    except ValueError:
        answer = response.text
    if response.status_code >= 400:
        raise AdminError(response.status_code, answer)
    if "ETag" in response.headers and isinstance(answer, dict):
        answer = {"etag": response.headers["ETag"], **answer}
    return answer


def run(args: argparse.Namespace) -> int:
    try:
        answer = call(args)
    except AdminError as exc:
        print(f"sluice admin: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"sluice admin: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"sluice admin: {exc}", file=sys.stderr)
        return 2
    print(answer if isinstance(answer, str) else json.dumps(answer, indent=2))
    return 0
