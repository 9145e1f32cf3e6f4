"""A generation request against its tenant's rate limits (gateway/limiter.py), and OpenAI's
``x-ratelimit-*`` headers on every ``/v1`` answer to a tenant with limits.

Answers that end before the check (a malformed body, say) carry the tenant's buckets as of
its last check on this replica; a refusal carries its own."""

from __future__ import annotations

from aiohttp import web

from gateway.api.context import QUOTA_KEY, RUNTIME, TENANT_KEY
from gateway.config import TenantConfig
from gateway.estimate import Estimate
from gateway.limiter import Hold, ask_for, rate_headers
from gateway.records import RequestRecord
from gateway.runtime import Runtime


def limited(entry: TenantConfig | None) -> bool:
    return entry is not None and ask_for(entry.limits, 0, 0).limited


async def check_limits(
    request: web.Request,
    runtime: Runtime,
    tenant: str,
    entry: TenantConfig,
    model: str,
    expected: Estimate,
) -> Hold | None:
    """Take the request's share of its tenant's limits (raises RateLimited), if it has any.
    It is expected to hold a concurrent slot for as long as the fleet's latency models say
    a request of its size takes now."""
    if not limited(entry):
        return None
    prompt, output = expected.prompt_tokens, expected.output_tokens
    services = runtime.services
    hold_s = services.fleet.service_time(model, prompt, output)
    hold = await services.limiter.admit(tenant, entry.limits, prompt, prompt + output, hold_s)
    request[QUOTA_KEY] = hold.state
    return hold


def used_tokens(record: RequestRecord) -> int:
    """Prompt and reply tokens a request used (none if it was never sent)."""
    return record.served_prompt_tokens + record.tokens


async def add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the headers on every /v1 answer to a limited tenant."""
    tenant = request.get(TENANT_KEY)
    if tenant is None or not request.path.startswith("/v1/"):
        return
    runtime = request.app[RUNTIME]
    entry = runtime.config.tenants.get(tenant)
    if entry is None or not limited(entry):
        return
    state = request.get(QUOTA_KEY) or runtime.services.limiter.last(tenant)
    if state is None:
        return
    for name, value in rate_headers(ask_for(entry.limits, 0, 0), state).items():
        response.headers.setdefault(name, value)
