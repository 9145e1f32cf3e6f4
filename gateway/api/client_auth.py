"""Who may call ``/v1``: a client key, checked on every request (gateway/keys.py).

Once any client key has been made, ``/v1`` needs ``Authorization: Bearer KEY`` with an
active key (revoking every key does not open it again); the key's tenant travels with the
request. Before any key exists the gateway stays open on loopback (the demo, the tests) and
refuses ``/v1`` beyond it unless ``SLUICE_OPEN_ACCESS`` opens it.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.api.context import RUNTIME, TENANT_KEY
from gateway.errors import KeysRequired, Unauthorized
from gateway.net import loopback

_BEARER = "bearer "


@web.middleware
async def client_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1"):
        return await handler(request)
    runtime = request.app[RUNTIME]
    keys = runtime.keys
    if not keys.configured:
        settings = runtime.settings
        if not (settings.open_access or loopback(settings.host)):
            raise KeysRequired(
                "no client key exists and the gateway listens beyond loopback: create keys "
                "(sluice admin keys create TENANT) or set SLUICE_OPEN_ACCESS=true"
            )
        return await handler(request)
    given = request.headers.get("Authorization", "")
    if not given[: len(_BEARER)].lower() == _BEARER:
        raise Unauthorized("a client key is required: Authorization: Bearer sk-sluice-...")
    record = keys.authenticate(given[len(_BEARER) :].strip())
    if record is None:
        raise Unauthorized("unknown or revoked client key")
    request[TENANT_KEY] = record.tenant
    return await handler(request)
