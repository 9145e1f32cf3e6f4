"""Immutable views that scheduling decisions are computed over."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackendView:
    name: str
    healthy: bool
    models: frozenset[str]
    in_flight: int
    max_in_flight: int
    weight: float = 1.0

    @property
    def has_room(self) -> bool:
        return self.in_flight < self.max_in_flight


@dataclass(frozen=True, slots=True)
class WaitingView:
    """A request in the gateway queue."""

    ticket: int
    model: str
    arrival: float
    deadline: float
    excluded: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Placement:
    ticket: int
    backend: str
