"""Tenants' rate limits on the request path: one check per request, shared by every replica.

With Redis, a request's check is one Lua call (``QuotaStore.take_quota``): its request, its
token reservation and its concurrent slot are taken together, or nothing is. What a request
gives back when it ends (tokens reserved and not used, its slot) is not sent on its own: a
replica's settlements coalesce for ``flush_s`` into one call, which also renews the replica's
concurrent leases (they lapse after ``lease_ttl_s`` if the replica dies) and registers the
replica. So a freed slot shows across replicas within ``flush_s`` plus a round trip.

With Redis away, each replica admits on its own book with each limit divided by the number of
replicas last seen: across replicas the limits hold to within what was in flight when Redis
went, if the load is spread evenly (a replica taking all of a tenant's traffic admits only its
part of the limit). With the embedded store there is one replica and the book is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import TenantLimits
from gateway.errors import RateLimited
from gateway.quota import QuotaAsk, QuotaBook, QuotaState, Settlement
from gateway.refusals import REASON_HEADER
from gateway.state.store import QuotaStore, StoreUnavailable

log = logging.getLogger(__name__)

MAX_TENANTS_PER_CALL = 500
MAX_PENDING_TENANTS = 100_000


@dataclass(frozen=True, slots=True)
class Hold:
    """A request's hold on its tenant's limits, from admission until settled."""

    tenant: str
    lease: str
    tpm: int | None  # the limit the reservation was taken under
    reserved: int
    local: bool  # taken on this replica's own book (Redis away, or none)
    state: QuotaState


@dataclass(slots=True)
class _Pending:
    tpm: int | None
    refund: int = 0
    ended: list[str] = field(default_factory=list)


def ask_for(
    limits: TenantLimits, prompt_tokens: int, tokens: int, hold_s: float | None = None
) -> QuotaAsk:
    return QuotaAsk(
        limits.requests_per_second,
        limits.tokens_per_minute,
        limits.max_concurrent,
        prompt_tokens,
        tokens,
        hold_s,
    )


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    rest = round(rest, 3)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:g}s"


def rate_headers(ask: QuotaAsk, state: QuotaState) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the tenant's requests and tokens limits."""
    headers: dict[str, str] = {}
    if ask.rps is not None and state.requests_remaining is not None:
        headers["x-ratelimit-limit-requests"] = f"{ask.rps:g}"
        headers["x-ratelimit-remaining-requests"] = str(max(0, state.requests_remaining))
        headers["x-ratelimit-reset-requests"] = duration(state.requests_reset_s)
    if ask.tpm is not None and state.tokens_remaining is not None:
        headers["x-ratelimit-limit-tokens"] = str(ask.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, state.tokens_remaining))
        headers["x-ratelimit-reset-tokens"] = duration(state.tokens_reset_s)
    return headers


def refusal(tenant: str, ask: QuotaAsk, state: QuotaState) -> RateLimited:
    reason = state.reason or "requests"
    wait = state.retry_after_s
    again = f"; try again in {wait:.3g}s"
    if reason == "too_large":
        return RateLimited(
            f"request too large for tenant {tenant!r} on tokens per minute: limit "
            f"{ask.tpm}, the prompt alone is about {ask.prompt_tokens} tokens",
            kind="tokens",
            reason=reason,
            code="request_too_large",
            headers={REASON_HEADER: "rate_limit_too_large", **rate_headers(ask, state)},
        )
    if reason == "concurrent":
        message = (
            f"concurrency limit reached for tenant {tenant!r}: limit {ask.concurrent}, "
            f"in flight {state.concurrent}{again}"
        )
        kind, code = "requests", "concurrency_limit_exceeded"
    elif reason == "tokens":
        message = (
            f"rate limit reached for tenant {tenant!r} on tokens per minute: limit {ask.tpm},"
            f" remaining {max(0, state.tokens_remaining or 0)}, requested {ask.reserve()}"
            f"{again}"
        )
        kind, code = "tokens", "rate_limit_exceeded"
    else:
        message = (
            f"rate limit reached for tenant {tenant!r} on requests per second: limit "
            f"{ask.rps:g}{again}"
        )
        kind, code = "requests", "rate_limit_exceeded"
    headers = {
        "Retry-After": str(max(1, math.ceil(wait))),
        "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
        REASON_HEADER: f"rate_limit_{reason}",
        **rate_headers(ask, state),
    }
    return RateLimited(message, kind=kind, reason=reason, code=code, headers=headers)


class TenantLimiter:
    def __init__(
        self,
        store: QuotaStore | None,
        *,
        lease_ttl_s: float = 30.0,
        flush_s: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._book = QuotaBook(clock)
        self._clock = clock
        self._lease_ttl_s = lease_ttl_s
        self._flush_s = flush_s
        self._replica = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self.replicas = 1  # replicas sharing the limits, as the store last said
        self._pending: dict[str, _Pending] = {}
        self._held: dict[str, str] = {}  # concurrent lease in the store -> tenant
        self._last: dict[str, QuotaState] = {}
        self._wake = asyncio.Event()
        self.reachable = True

    @property
    def shared(self) -> bool:
        return self._store is not None

    async def admit(
        self,
        tenant: str,
        limits: TenantLimits,
        prompt: int,
        tokens: int,
        hold_s: float | None = None,
    ) -> Hold:
        """Take the request's share of ``tenant``'s limits, or raise RateLimited.
        ``hold_s``: how long it is predicted to hold a concurrent slot (a refusal for
        concurrency says to try again when the soonest held slot is predicted to free)."""
        ask = ask_for(limits, prompt, tokens, hold_s)
        lease = f"{self._replica}:{next(self._ids)}"
        state: QuotaState | None = None
        if self._store is not None:
            try:
                state = await self._store.take_quota(tenant, ask, lease, self._lease_ttl_s)
            except StoreUnavailable:
                if self.reachable:
                    log.warning(
                        "rate limits: the store is away; each limit is cut to 1/%d here",
                        self.replicas,
                    )
                self.reachable = False
            else:
                self.reachable = True
        local = state is None
        if state is None:
            if self._store is not None and self.replicas > 1:
                ask = ask.scaled(1 / self.replicas)
            state = self._book.take(tenant, ask, lease, self._lease_ttl_s)
        self._last[tenant] = state
        if not state.admitted:
            raise refusal(tenant, ask, state)
        if not local and ask.concurrent is not None:
            self._held[lease] = tenant
        return Hold(tenant, lease, ask.tpm, ask.reserve(), local, state)

    def last(self, tenant: str) -> QuotaState | None:
        """The tenant's buckets as of its last check here."""
        return self._last.get(tenant)

    def settle(self, hold: Hold, used_tokens: int) -> None:
        """The request ended having used ``used_tokens`` (prompt and reply)."""
        refund = hold.reserved - used_tokens if hold.tpm is not None else 0
        if hold.local:
            self._book.settle(hold.tenant, hold.tpm, refund, hold.lease)
            return
        self._held.pop(hold.lease, None)
        entry = self._pending.get(hold.tenant)
        if entry is None:
            if len(self._pending) >= MAX_PENDING_TENANTS:
                log.error("rate limits: settlements for %s dropped: too many", hold.tenant)
                return
            entry = self._pending[hold.tenant] = _Pending(hold.tpm)
        entry.tpm = hold.tpm
        entry.refund += refund
        entry.ended.append(hold.lease)
        self._wake.set()

    async def usage(self, tenant: str, limits: TenantLimits) -> QuotaState:
        ask = ask_for(limits, 0, 0)
        if self._store is not None:
            with contextlib.suppress(StoreUnavailable):
                return await self._store.quota_usage(tenant, ask)
        return self._book.usage(tenant, ask)

    async def run(self) -> None:
        """Send settlements as they come (coalesced), and renew leases every third of
        their ttl."""
        if self._store is None:
            return
        renew_every = self._lease_ttl_s / 3
        await self.flush()  # registers this replica: the others learn how many share
        renewed_at = self._clock()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(renew_every):
                    await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._flush_s)
            renew = self._clock() - renewed_at >= renew_every
            if await self.flush(renew=renew) and renew:
                renewed_at = self._clock()

    async def flush(self, *, renew: bool = True) -> bool:
        """Send what is pending (and, with ``renew``, every held lease's renewal) now.
        Returns whether the store took it; if not, it stays pending."""
        if self._store is None:
            return True
        pending, self._pending = self._pending, {}
        renewals: dict[str, list[str]] = {}
        if renew:
            for lease, tenant in self._held.items():
                renewals.setdefault(tenant, []).append(lease)
        tenants = list(dict.fromkeys([*pending, *renewals]))
        entries = [
            Settlement(
                tenant,
                pending[tenant].tpm if tenant in pending else None,
                pending[tenant].refund if tenant in pending else 0,
                tuple(pending[tenant].ended) if tenant in pending else (),
                tuple(renewals.get(tenant, ())),
            )
            for tenant in tenants
        ]
        chunks = [
            entries[i : i + MAX_TENANTS_PER_CALL]
            for i in range(0, max(1, len(entries)), MAX_TENANTS_PER_CALL)
        ]
        for index, chunk in enumerate(chunks):
            try:
                self.replicas = await self._store.settle_quota(
                    self._replica, chunk, self._lease_ttl_s, 3 * self._lease_ttl_s
                )
            except StoreUnavailable:
                for entry in (e for c in chunks[index:] for e in c):
                    if entry.tenant in pending:
                        self._requeue(entry.tenant, pending[entry.tenant])
                return False
        return True

    def _requeue(self, tenant: str, entry: _Pending) -> None:
        current = self._pending.get(tenant)
        if current is None:
            self._pending[tenant] = entry
            return
        current.refund += entry.refund
        current.ended.extend(entry.ended)

    async def close(self) -> None:
        """Send the last settlements (best effort, bounded by the store's call timeout)."""
        if self._pending:
            await self.flush(renew=False)
