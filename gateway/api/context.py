"""What the API's handlers and middlewares find on the application and on each request."""

from __future__ import annotations

from aiohttp import web

from gateway.quota import QuotaState
from gateway.runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
TENANT_KEY = web.RequestKey("tenant", str)  # set by gateway.api.client_auth once a key is checked
QUOTA_KEY = web.RequestKey("quota", QuotaState)  # the request's rate-limit check, when it had one
