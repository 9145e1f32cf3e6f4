from __future__ import annotations

import pytest

from gateway.scheduling.policy import least_loaded
from gateway.scheduling.snapshot import BackendView, Demand, Placement, WaitingView


def backend(
    name: str,
    in_flight: int = 0,
    *,
    cap: int = 4,
    healthy: bool = True,
    models: tuple[str, ...] = ("m",),
    weight: float = 1.0,
) -> BackendView:
    return BackendView(name, healthy, frozenset(models), in_flight, cap, weight)


def waiting(ticket: int, model: str = "m", excluded: tuple[str, ...] = ()) -> WaitingView:
    return WaitingView(ticket, Demand(model, float(ticket), float(ticket) + 1), frozenset(excluded))


@pytest.mark.parametrize(
    ("queue", "backends", "expected"),
    [
        ([], [backend("a")], []),
        ([waiting(1)], [backend("a", 2), backend("b", 1)], [Placement(1, "b")]),
        # Ties go by name, so the choice is deterministic.
        ([waiting(1)], [backend("b"), backend("a")], [Placement(1, "a")]),
        # Load accumulates within one pass.
        (
            [waiting(1), waiting(2), waiting(3)],
            [backend("a", 0), backend("b", 1)],
            [Placement(1, "a"), Placement(2, "a"), Placement(3, "b")],
        ),
        # A full backend takes nothing; once all are full the rest waits.
        ([waiting(1), waiting(2)], [backend("a", 3), backend("b", 4)], [Placement(1, "a")]),
        ([waiting(1)], [backend("a", 0, healthy=False), backend("b", 3)], [Placement(1, "b")]),
        ([waiting(1)], [backend("a", models=("other",))], []),
        ([waiting(1, excluded=("a",))], [backend("a"), backend("b", 3)], [Placement(1, "b")]),
        # Weight divides load: 2/2 beats 1/0.5.
        (
            [waiting(1)],
            [backend("a", 2, weight=2), backend("b", 1, weight=0.5)],
            [Placement(1, "a")],
        ),
        # First come, first served: the earlier ticket gets the last slot.
        ([waiting(2), waiting(1)], [backend("a", 3)], [Placement(1, "a")]),
        # Another model's request is not blocked by a request that cannot be placed.
        (
            [waiting(1, model="x"), waiting(2)],
            [backend("a", 0, models=("m",))],
            [Placement(2, "a")],
        ),
    ],
)
def test_least_loaded(
    queue: list[WaitingView], backends: list[BackendView], expected: list[Placement]
) -> None:
    assert least_loaded(queue, backends, 0.0).placements == expected
