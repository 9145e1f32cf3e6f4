"""The gateway queue: requests wait here until the policy places them on a backend.

All state lives on the event loop; the policy itself is a pure function over a snapshot.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from gateway.errors import NoBackendAvailable
from gateway.fleet import Fleet
from gateway.scheduling.policy import Policy, least_loaded
from gateway.scheduling.snapshot import BackendView, WaitingView


@dataclass(eq=False, slots=True)
class _Ticket:
    id: int
    model: str
    arrival: float
    deadline: float
    excluded: frozenset[str]
    future: asyncio.Future[str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Lease:
    """A slot on one backend, held from dispatch until ``Scheduler.release``."""

    ticket: int
    backend: str
    dispatched_at: float


class Scheduler:
    def __init__(
        self,
        fleet: Fleet,
        policy: Policy = least_loaded,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fleet = fleet
        self._policy = policy
        self._clock = clock
        self._waiting: dict[int, _Ticket] = {}
        self._ids = itertools.count(1)

    def queue_depths(self) -> Counter[str]:
        return Counter(ticket.model for ticket in self._waiting.values())

    async def acquire(
        self,
        model: str,
        *,
        arrival: float,
        deadline: float,
        timeout_s: float,
        excluded: Collection[str] = (),
    ) -> Lease:
        """Wait for a slot on a backend serving ``model``; NoBackendAvailable if none comes."""
        excluded_set = frozenset(excluded)
        if not any(b.name not in excluded_set for b in self._fleet.healthy_for(model)):
            raise NoBackendAvailable(
                f"no healthy backend serves model {model!r}", headers={"Retry-After": "1"}
            )
        loop = asyncio.get_running_loop()
        ticket = _Ticket(
            next(self._ids), model, arrival, deadline, excluded_set, loop.create_future()
        )
        self._waiting[ticket.id] = ticket
        self.schedule()
        try:
            async with asyncio.timeout(timeout_s):
                backend = await asyncio.shield(ticket.future)
        except (TimeoutError, asyncio.CancelledError) as exc:
            self._withdraw(ticket)
            if isinstance(exc, TimeoutError):
                raise NoBackendAvailable(
                    f"no backend slot for model {model!r} within {timeout_s:g}s",
                    headers={"Retry-After": "1"},
                ) from None
            raise
        return Lease(ticket.id, backend, self._clock())

    def _withdraw(self, ticket: _Ticket) -> None:
        """Take a ticket out of the queue; a slot granted in the same instant is given back."""
        self._waiting.pop(ticket.id, None)
        if ticket.future.done():
            self._fleet[ticket.future.result()].in_flight -= 1
            self.schedule()
        else:
            ticket.future.cancel()

    def release(self, lease: Lease) -> None:
        self._fleet[lease.backend].in_flight -= 1
        self.schedule()

    def schedule(self) -> None:
        """Run the policy over the current snapshot and hand out the slots it grants."""
        if not self._waiting:
            return
        waiting = [
            WaitingView(t.id, t.model, t.arrival, t.deadline, t.excluded)
            for t in self._waiting.values()
        ]
        backends = [
            BackendView(
                b.name, b.healthy, b.models, b.in_flight, b.config.max_in_flight, b.config.weight
            )
            for b in self._fleet
        ]
        for placement in self._policy(waiting, backends):
            ticket = self._waiting.pop(placement.ticket)
            self._fleet[placement.backend].in_flight += 1
            ticket.future.set_result(placement.backend)
