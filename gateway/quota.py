"""A tenant's rate limits as buckets: the arithmetic, and one process's book of them.

Requests and tokens are each a bucket refilled continuously: requests at ``rps`` per second
up to ``max(rps, 1)``, tokens at a minute's worth per minute up to ``tpm``. A request is
admitted when its tenant has a request in the bucket, the tokens it reserves (prompt plus
predicted reply, at most the whole bucket), and a free concurrent slot; then all three are
taken at once, and nothing is taken from a request refused. When it ends, the difference
between what it reserved and what it used goes back (or, used more, is owed: the bucket goes
below zero). The Redis store runs the same arithmetic in Lua (``state/scripts.py``) on the
server's clock; ``QuotaBook`` runs it in process, for the embedded store and for a replica
that cannot reach Redis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

CONCURRENT_RETRY_S = 1.0  # when no lease says when it ends: a second, as a hint
MIN_CONCURRENT_RETRY_S = 0.05  # a lease past its predicted end may end at any moment


@dataclass(frozen=True, slots=True)
class QuotaAsk:
    """One request's claim on its tenant's limits (None: that limit is not set)."""

    rps: float | None
    tpm: int | None
    concurrent: int | None
    prompt_tokens: int
    tokens: int  # prompt plus predicted reply
    hold_s: float | None = None  # how long it is predicted to hold a concurrent slot

    @property
    def limited(self) -> bool:
        return self.rps is not None or self.tpm is not None or self.concurrent is not None

    def reserve(self) -> int:
        """Tokens taken at admission: the claim, at most a full bucket."""
        return min(self.tokens, self.tpm) if self.tpm is not None else 0

    def scaled(self, share: float) -> QuotaAsk:
        """The limits cut to ``share`` of themselves (one replica's part of a whole)."""
        return QuotaAsk(
            None if self.rps is None else self.rps * share,
            None if self.tpm is None else max(1, math.floor(self.tpm * share)),
            None if self.concurrent is None else max(1, math.floor(self.concurrent * share)),
            self.prompt_tokens,
            self.tokens,
            self.hold_s,
        )


@dataclass(frozen=True, slots=True)
class QuotaState:
    """A decision, and the tenant's buckets after it (None: that limit is not set)."""

    admitted: bool
    reason: str | None = None  # requests | tokens | concurrent | too_large
    retry_after_s: float = 0.0
    requests_remaining: int | None = None
    requests_reset_s: float = 0.0  # until the bucket is full again
    tokens_remaining: int | None = None
    tokens_reset_s: float = 0.0
    concurrent: int = 0


@dataclass(frozen=True, slots=True)
class Settlement:
    """What one replica gives back to one tenant's limits at a time: tokens reserved and not
    used (negative: used beyond the reservation), leases of requests ended, leases renewed."""

    tenant: str
    tpm: int | None
    refund: int = 0
    ended: tuple[str, ...] = ()
    renewed: tuple[str, ...] = ()


@dataclass(slots=True)
class _Bucket:
    level: float
    at: float

    def refill(self, now: float, cap: float, rate: float) -> float:
        self.level = min(cap, self.level + max(0.0, now - self.at) * rate)
        self.at = max(self.at, now)
        return self.level


@dataclass(slots=True)
class _Tenant:
    requests: _Bucket | None = None
    tokens: _Bucket | None = None
    leases: dict[str, float] = field(default_factory=dict)  # lease -> expiry
    ends: dict[str, float] = field(default_factory=dict)  # lease -> its predicted end


def concurrent_wait(ends: Iterable[float], now: float) -> float:
    """When a concurrent slot is predicted to free: the soonest predicted end of those held
    (at least ``MIN_CONCURRENT_RETRY_S``), or the hint when none says."""
    soonest = min(ends, default=None)
    if soonest is None:
        return CONCURRENT_RETRY_S
    return max(MIN_CONCURRENT_RETRY_S, soonest - now)


def request_cap(rps: float) -> float:
    return max(rps, 1.0)


def full_in(level: float, cap: float, rate: float) -> float:
    return max(0.0, (cap - level) / rate)


class QuotaBook:
    """Every tenant's buckets and concurrent leases in one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}

    def _tenant(self, name: str, now: float) -> _Tenant:
        tenant = self._tenants.setdefault(name, _Tenant())
        for lease in [lease for lease, expiry in tenant.leases.items() if expiry <= now]:
            del tenant.leases[lease]
            tenant.ends.pop(lease, None)
        return tenant

    def take(self, tenant_name: str, ask: QuotaAsk, lease: str, ttl_s: float) -> QuotaState:
        now = self._clock()
        tenant = self._tenant(tenant_name, now)
        reasons: list[str] = []
        wait = 0.0
        requests = tokens = None
        if ask.rps is not None:
            cap = request_cap(ask.rps)
            tenant.requests = tenant.requests or _Bucket(cap, now)
            requests = tenant.requests.refill(now, cap, ask.rps)
            if requests < 1:
                reasons.append("requests")
                wait = max(wait, (1 - requests) / ask.rps)
        if ask.tpm is not None:
            rate = ask.tpm / 60
            tenant.tokens = tenant.tokens or _Bucket(float(ask.tpm), now)
            tokens = tenant.tokens.refill(now, ask.tpm, rate)
            need = ask.reserve()
            if ask.prompt_tokens > ask.tpm:
                reasons.append("too_large")
            elif tokens < need:
                reasons.append("tokens")
                wait = max(wait, (need - tokens) / rate)
        if ask.concurrent is not None and len(tenant.leases) >= ask.concurrent:
            reasons.append("concurrent")
            wait = max(wait, concurrent_wait(tenant.ends.values(), now))
        admitted = not reasons
        if admitted:
            if tenant.requests is not None and requests is not None:
                tenant.requests.level = requests = requests - 1
            if tenant.tokens is not None and tokens is not None:
                tenant.tokens.level = tokens = tokens - ask.reserve()
            if ask.concurrent is not None:
                tenant.leases[lease] = now + ttl_s
                if ask.hold_s is not None:
                    tenant.ends[lease] = now + ask.hold_s
        return self._state(admitted, reasons, wait, ask, requests, tokens, len(tenant.leases))

    @staticmethod
    def _state(
        admitted: bool,
        reasons: list[str],
        wait: float,
        ask: QuotaAsk,
        requests: float | None,
        tokens: float | None,
        concurrent: int,
    ) -> QuotaState:
        order = ("too_large", "concurrent", "requests", "tokens")
        reason = min(reasons, key=order.index) if reasons else None
        return QuotaState(
            admitted,
            reason,
            0.0 if reason == "too_large" else wait,
            None if requests is None else math.floor(requests),
            0.0
            if requests is None or ask.rps is None
            else full_in(requests, request_cap(ask.rps), ask.rps),
            None if tokens is None else math.floor(tokens),
            0.0 if tokens is None or ask.tpm is None else full_in(tokens, ask.tpm, ask.tpm / 60),
            concurrent,
        )

    def settle(
        self, tenant_name: str, tpm: int | None, refund: int, lease: str | None = None
    ) -> None:
        """A request ended: ``refund`` tokens go back (negative: it used more than it
        reserved), and its concurrent lease is dropped."""
        now = self._clock()
        tenant = self._tenant(tenant_name, now)
        if lease is not None:
            tenant.leases.pop(lease, None)
            tenant.ends.pop(lease, None)
        if tpm is not None and tenant.tokens is not None:
            tenant.tokens.refill(now, tpm, tpm / 60)
            tenant.tokens.level = min(float(tpm), tenant.tokens.level + refund)

    def renew(self, tenant_name: str, lease: str, ttl_s: float) -> None:
        tenant = self._tenants.get(tenant_name)
        if tenant is not None and lease in tenant.leases:
            tenant.leases[lease] = self._clock() + ttl_s

    def usage(self, tenant_name: str, ask: QuotaAsk) -> QuotaState:
        """The tenant's buckets now, taking nothing."""
        now = self._clock()
        tenant = self._tenant(tenant_name, now)
        requests = tokens = None
        if ask.rps is not None:
            cap = request_cap(ask.rps)
            requests = tenant.requests.refill(now, cap, ask.rps) if tenant.requests else cap
        if ask.tpm is not None:
            tokens = tenant.tokens.refill(now, ask.tpm, ask.tpm / 60) if tenant.tokens else ask.tpm
        return self._state(True, [], 0.0, ask, requests, tokens, len(tenant.leases))
