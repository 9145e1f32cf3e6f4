"""Weighted fair share between tenants under overload, in the manner of the Virtual Token
Counter (Sheng et al., OSDI 2024).

Each tenant's service is counted in tokens, a prompt token weighing ``prefill`` and a
generated token ``decode``, divided by the tenant's weight. The count is charged when a
request is dispatched (its prompt and predicted reply) and corrected when it ends (the
tokens it really generated). Where VTC lifts a returning tenant's counter to the smallest
among those backlogged, this counter decays instead (half-life ``half_life_s``): a tenant
that sends little is not lifted to a flooder's counter at each of its arrivals, and one that
was idle banks no more than about one half-life of credit.

From the counters, each waiting tenant gets a rank: tenants whose counters lie within
``tolerance`` (relative) plus ``slack_tokens`` of each other share a rank, and a higher rank
means more service received. The policy orders its queue by rank before deadline, so when
its guards must refuse or hold requests, they refuse and hold those of the tenants above
their share first; among requests that can all be admitted, the order does not matter.

Ordering alone does not keep a light tenant served while another floods: the flood's
requests, admitted while the light tenant had nothing waiting, fill every slot, and the
light tenant's next tight request then waits for one to free (nothing is pre-empted). So a
tenant is also kept ``reserve_slots`` of each model it has used within ``active_s``: a
request of a tenant ranked above it may not take the model's last ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Tenant = str | None


@dataclass(frozen=True, slots=True)
class ShareRules:
    half_life_s: float = 30.0
    tolerance: float = 0.1
    slack_tokens: float = 2000.0
    prefill: float = 1.0
    decode: float = 2.0
    reserve_slots: int = 1  # slots kept free per model for each recently active lower-ranked tenant
    active_s: float = 10.0  # how long after its last arrival a tenant counts as active


@dataclass(slots=True)
class _Counter:
    value: float = 0.0
    at: float = 0.0


class FairShare:
    """Per tenant, recent weighted service; ``weight`` gives each tenant's weight."""

    def __init__(
        self, rules: ShareRules, weight: Callable[[Tenant], float] = lambda _tenant: 1.0
    ) -> None:
        self.rules = rules
        self.weight = weight
        self._counters: dict[Tenant, _Counter] = {}

    def _decayed(self, counter: _Counter, now: float) -> float:
        if now <= counter.at:
            return counter.value
        return counter.value * math.exp2(-(now - counter.at) / self.rules.half_life_s)

    def charge(self, tenant: Tenant, prompt: int, decode: int, now: float) -> None:
        """Add service: ``prompt`` tokens prefilled and ``decode`` generated (negative to
        correct an earlier charge)."""
        counter = self._counters.setdefault(tenant, _Counter(0.0, now))
        cost = self.rules.prefill * prompt + self.rules.decode * decode
        counter.value = max(0.0, self._decayed(counter, now) + cost / self.weight(tenant))
        counter.at = max(now, counter.at)
        if counter.value < 1e-3:
            del self._counters[tenant]  # forgotten once decayed: the table stays bounded

    def service(self, tenant: Tenant, now: float) -> float:
        """Recent weighted service, in weighted tokens per unit of weight."""
        counter = self._counters.get(tenant)
        return 0.0 if counter is None else self._decayed(counter, now)

    def ranks(self, tenants: Iterable[Tenant], now: float) -> dict[Tenant, int]:
        """Each of ``tenants``' rank: 0 for those served least, up by one for each group of
        tenants served more than the group before by more than the tolerance."""
        served = sorted((self.service(t, now), i, t) for i, t in enumerate(set(tenants)))
        ranks: dict[Tenant, int] = {}
        rank, base = 0, None
        for value, _, tenant in served:
            if base is None:
                base = value
            elif value > base * (1 + self.rules.tolerance) + self.rules.slack_tokens:
                rank, base = rank + 1, value
            ranks[tenant] = rank
        return ranks

    def tenants(self) -> list[Tenant]:
        return list(self._counters)
