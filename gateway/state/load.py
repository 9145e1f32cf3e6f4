"""Per-backend load held across gateway replicas, and the admission rule applied to it.

Each request in flight holds a *lease* on its backend in the shared store, carrying its
weight there: the KV tokens it reserves, its context estimate and its TPOT target. The store
admits a new lease only when the backend, loaded with every replica's leases, still passes
the rule below; it checks and records in one atomic step, so replicas racing for the same
backend cannot together push it past what one gateway would admit. The Redis store runs the
same rule as a Lua script; ``admits`` is its definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.scheduling.latency import ItlParams


@dataclass(frozen=True, slots=True)
class LeaseWeight:
    """What one in-flight request weighs on its backend."""

    kv_tokens: int  # prompt + conservative output estimate
    context: int  # prompt + half the predicted output: its mean context while decoding
    tpot_s: float  # its TPOT target (inf: none)


@dataclass(frozen=True, slots=True)
class LoadTotals:
    """The sum of a set of leases on one backend."""

    count: int = 0
    kv_tokens: int = 0
    context: int = 0
    min_tpot_s: float = math.inf

    def plus(self, lease: LeaseWeight) -> LoadTotals:
        return LoadTotals(
            self.count + 1,
            self.kv_tokens + lease.kv_tokens,
            self.context + lease.context,
            min(self.min_tpot_s, lease.tpot_s),
        )

    def minus(self, other: LoadTotals) -> LoadTotals:
        """What is left once ``other`` (a subset) is taken out; the minimum TPOT target cannot
        be taken apart, so it stays (a conservative choice)."""
        return LoadTotals(
            max(0, self.count - other.count),
            max(0, self.kv_tokens - other.kv_tokens),
            max(0, self.context - other.context),
            self.min_tpot_s,
        )

    @classmethod
    def of(cls, leases: list[LeaseWeight]) -> LoadTotals:
        totals = cls()
        for lease in leases:
            totals = totals.plus(lease)
        return totals


@dataclass(frozen=True, slots=True)
class AdmissionRule:
    """The VBS admission of ALGORITHMS.md §4 (gateway form) over the leases of all replicas:
    at most ``max_in_flight``; KV reserved within ``kv_capacity``; and
    epsilon * ITL(N + 1, mean context) <= margin * min TPOT target over the leases and the new
    one. Without ``itl`` only the first two apply."""

    max_in_flight: int
    kv_capacity: int | None = None
    itl: ItlParams | None = None
    epsilon: float = 1.3
    margin: float = 0.99


def admits(rule: AdmissionRule, held: LoadTotals, lease: LeaseWeight) -> bool:
    if held.count + 1 > rule.max_in_flight:
        return False
    if rule.kv_capacity is not None and held.kv_tokens + lease.kv_tokens > rule.kv_capacity:
        return False
    if rule.itl is None:
        return True
    after = held.plus(lease)
    itl = rule.epsilon * rule.itl.predict(after.count, after.context / after.count)
    return itl <= rule.margin * after.min_tpot_s


@dataclass(frozen=True, slots=True)
class Grant:
    """The store's answer to a lease request, with the backend's totals after it."""

    admitted: bool
    totals: LoadTotals
