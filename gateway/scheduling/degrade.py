"""Degrading to a cheaper variant of a model while its pool is under pressure.

A request whose class (as capped by its tenant) allows it carries its model's variants
(``Demand.variants``). ``Pressure`` tells, per model, whether degrading is on: the decayed
share of the requests placed for the model on its backends that their guards refused
(``GUARD_REFUSALS``), counting those then sent to a variant (and, for a variant, the
requests degraded to it), turns it on above ``enter_share``; it turns off, as
MorphServe restores full precision, only once that share is below ``leave_share``, nothing of
the model waits in the queue, and it has been on for ``min_dwell_s``: asymmetric hysteresis,
so that it neither flaps nor lingers. While it is on:

- ``when_unattainable``: a request the guards refuse on its own model is queued again for
  its next variant, with its own deadline and targets; the guards there decide as honestly;
- ``prefer_fast``: a request is queued from the start for its first variant that is not
  under pressure itself (so that a small variant pool is not flooded), and for its own model
  again if no variant can serve it in time.

Off, nothing is degraded and a refusal stays a refusal. Pure bookkeeping: the scheduler asks
and tells, the policy never sees it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from gateway.scheduling.snapshot import Demand, Route

# Refusals for the targets, which a variant may still meet.
GUARD_REFUSALS = frozenset(
    {"ttft_unattainable", "ttft_late", "tpot_unattainable", "no_ready_backend"}
)


@dataclass(frozen=True, slots=True)
class PressureRules:
    enter_share: float = 0.05
    leave_share: float = 0.01
    half_life_s: float = 10.0
    min_dwell_s: float = 5.0


@dataclass(slots=True)
class _Share:
    refused: float = 0.0
    decided: float = 0.0
    at: float = -math.inf
    on: bool = False
    since: float = -math.inf  # when it last turned on


@dataclass(slots=True)
class Pressure:
    """Per model, the decayed share of its requests its own backends refused, and whether
    degrading is on (with hysteresis)."""

    rules: PressureRules = field(default_factory=PressureRules)
    _shares: dict[str, _Share] = field(default_factory=dict)

    def _decayed(self, model: str, now: float) -> _Share:
        share = self._shares.setdefault(model, _Share(at=now))
        if now > share.at:
            keep = 0.5 ** ((now - share.at) / self.rules.half_life_s)
            share.refused *= keep
            share.decided *= keep
            share.at = now
        return share

    def observe(self, model: str, refused: bool, now: float) -> None:
        """One decision on a request for ``model`` on its own backends."""
        share = self._decayed(model, now)
        share.decided += 1.0
        share.refused += float(refused)
        if not share.on and share.refused / share.decided > self.rules.enter_share:
            share.on, share.since = True, now

    def settle(self, now: float, queued: Mapping[str, int]) -> None:
        """Turn degrading off where the pressure has passed: the share under
        ``leave_share``, nothing of the model queued, on for ``min_dwell_s`` at least."""
        for model, share in self._shares.items():
            if (
                share.on
                and now - share.since >= self.rules.min_dwell_s
                and not queued.get(model)
                and self.share(model, now) < self.rules.leave_share
            ):
                share.on = False

    def any_on(self) -> bool:
        return any(share.on for share in self._shares.values())

    def on(self, model: str) -> bool:
        share = self._shares.get(model)
        return share is not None and share.on

    def share(self, model: str, now: float) -> float:
        share = self._decayed(model, now)
        return share.refused / share.decided if share.decided > 0 else 0.0

    def state(self, now: float) -> dict[str, dict[str, float | bool]]:
        """Per model, its pressure share and whether degrading is on."""
        return {
            model: {"share": round(self.share(model, now), 6), "degrading": self.on(model)}
            for model in sorted(self._shares)
        }


def first_route(d: Demand, pressure: Pressure) -> Demand:
    """Where a request is queued first: a ``prefer_fast`` one, while its model is degrading,
    for its first variant not under pressure itself (its own model last among what is left);
    any other, or with every variant under pressure, for its own model."""
    if d.degrade != "prefer_fast" or not d.variants or not pressure.on(d.model):
        return d
    calm = [v for v in d.variants if not pressure.on(v.model)]
    if not calm:
        return d
    first = calm[0]
    rest = tuple(v for v in d.variants if v != first)
    return replace(
        d,
        model=first.model,
        pool=first.pool,
        variants=(*rest, Route(d.model, d.pool)),
        origin=d.model,
    )


def next_route(d: Demand) -> Demand | None:
    """The same request queued for its next route, or None when it has none left."""
    if not d.variants:
        return None
    route, *rest = d.variants
    asked = d.asked
    return replace(
        d,
        model=route.model,
        pool=route.pool,
        variants=tuple(rest),
        origin=None if route.model == asked else asked,
    )
