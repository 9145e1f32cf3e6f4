"""Placement policies: pure functions from a snapshot to the dispatches to make now."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.scheduling.snapshot import BackendView, Placement, WaitingView

Policy = Callable[[Sequence[WaitingView], Sequence[BackendView]], list[Placement]]


def least_loaded(
    waiting: Sequence[WaitingView], backends: Sequence[BackendView]
) -> list[Placement]:
    """First come, first served, each to the healthy backend with the lowest in-flight/weight.

    A request with no eligible backend that has room stays queued; requests behind it may still
    go to other backends (a model's requests do not block another model's).
    """
    load = {b.name: b.in_flight for b in backends}
    placements: list[Placement] = []
    for request in sorted(waiting, key=lambda w: (w.arrival, w.ticket)):
        candidates = [
            b
            for b in backends
            if b.healthy
            and request.model in b.models
            and b.name not in request.excluded
            and load[b.name] < b.max_in_flight
        ]
        if not candidates:
            continue
        best = min(candidates, key=lambda b: (load[b.name] / b.weight, b.name))
        load[best.name] += 1
        placements.append(Placement(request.ticket, best.name))
    return placements
