"""The gateway queue: requests wait here until the policy places or rejects them.

All state lives on the event loop; the policy itself is a pure function over a snapshot,
run on every arrival and completion and on a periodic tick (budgets shrink while waiting).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, TypeVar

from gateway.prefix_index import PrefixIndex
from gateway.scheduling.degrade import GUARD_REFUSALS, Pressure, first_route, next_route
from gateway.scheduling.fairness import FairShare, ShareRules
from gateway.scheduling.policy import Policy, least_loaded
from gateway.scheduling.snapshot import (
    Activation,
    BackendView,
    Demand,
    Placement,
    Rejection,
    RollingView,
    WaitingView,
)
from gateway.state.load import LoadTotals

S = TypeVar("S")
MAX_SESSIONS = 100_000  # sessions whose last backend is remembered, least recent dropped


@dataclass(eq=False, slots=True)
class _Ticket:
    id: int
    demand: Demand
    excluded: frozenset[str]
    future: asyncio.Future[Placement | Rejection] = field(repr=False)
    credit: float = 0.0
    rank: int = 0
    leave_slots: int = 0
    committed: bool = False
    cached: dict[str, int] = field(default_factory=dict)
    affine: str | None = None
    _view: WaitingView | None = field(default=None, repr=False)

    def view(self) -> WaitingView:
        """Its snapshot view, built again only when where it stands changed."""
        view = self._view
        if (
            view is None
            or view.credit != self.credit
            or view.rank != self.rank
            or view.leave_slots != self.leave_slots
            or view.committed != self.committed
            or view.cached is not self.cached
            or view.affine != self.affine
        ):
            self._view = view = WaitingView(
                self.id,
                self.demand,
                self.excluded,
                self.credit,
                self.rank,
                self.cached,
                self.affine,
                self.leave_slots,
                self.committed,
            )
        return view


class Ended(Protocol):
    """What a request that ended was, as fair share counts it."""

    tenant: str | None
    prompt_tokens: int
    predicted_tokens: int
    tokens: int


class Seats(Protocol[S]):
    """What the scheduler needs of a fleet (``gateway.fleet.Fleet`` is one): views of its
    backends for the policy, and a seat on one for each request placed, of type ``S``."""

    def views(
        self,
        peer_load: Callable[[str], LoadTotals],
        rolling: Callable[[str], RollingView | None],
        wanted: frozenset[str] = frozenset(),
    ) -> list[BackendView]:
        """``wanted``: the models waiting requests ask for (LoRA adapters among them)."""
        ...

    def serves(self, model: str, excluded: frozenset[str]) -> bool:
        """Some backend not excluded is meant to serve ``model``."""
        ...

    def capacities(self) -> list[tuple[str, int | None]]:
        """Each backend's KV capacity in tokens, where known."""
        ...

    def seat(self, name: str, ticket: int, demand: Demand, cached: int, now: float) -> S: ...

    def unseat(self, seat: S) -> Ended | None: ...

    def tenants_in_flight(self) -> list[str | None]: ...


@dataclass(frozen=True, slots=True)
class Lease(Generic[S]):
    """A seat on one backend, held from dispatch until ``Scheduler.release``."""

    ticket: int
    backend: str
    dispatched_at: float
    seat: S
    priority: int | None = None
    model: str | None = None  # the model it is served as (a variant's, when degraded)


class Scheduler(Generic[S]):
    """The gateway queue over any fleet that gives ``Seats``; its placements are seats of
    type ``S``, its refusals ``Rejection``s for the caller to answer."""

    def __init__(
        self,
        fleet: Seats[S],
        policy: Policy = least_loaded,
        clock: Callable[[], float] = time.monotonic,
        peer_load: Callable[[str], LoadTotals] = lambda _name: LoadTotals(),
    ) -> None:
        self._fleet = fleet
        self.policy = policy
        self._clock = clock
        self.peer_load = peer_load  # other gateway replicas' load per backend
        self.fair: FairShare | None = FairShare(ShareRules())  # None: no fair share
        self.prefix: PrefixIndex | None = PrefixIndex()  # None: prefix caches not counted
        self.pressure: Pressure | None = None  # None: requests are never sent to variants
        self._sessions: OrderedDict[str, str] = OrderedDict()  # session -> its last backend
        # (model, tenant) -> its last arrival, while within fair share's active_s
        self._arrived: dict[tuple[str, str | None], float] = {}
        self._prefix_version = -1
        self._waiting: dict[int, _Ticket] = {}
        # ticket -> its seat and when it was dispatched, until it is released
        self._seats: dict[int, tuple[S, float]] = {}
        self._ids = itertools.count(1)
        # Macro instances: backend -> (instance, place in its cycle), and each instance's
        # active backend. Activation is this replica's own: replicas roll independently.
        self.instances: dict[str, tuple[str, int]] = {}
        self._active: dict[str, Activation] = {}

    def queue_depths(self) -> Counter[str]:
        return Counter(ticket.demand.model for ticket in self._waiting.values())

    def tenant_load(self) -> tuple[Counter[str | None], Counter[str | None]]:
        """Per tenant, its requests waiting here and in flight from here."""
        waiting = Counter(ticket.demand.tenant for ticket in self._waiting.values())
        return waiting, Counter(self._fleet.tenants_in_flight())

    async def acquire(
        self, demand: Demand, *, timeout_s: float, excluded: Collection[str] = ()
    ) -> Lease[S] | Rejection:
        """Wait for a slot on a backend serving the model; or the reason it will not get
        one (none serves it, none frees up in time, the policy refuses it)."""
        ticket = self._enqueue(demand, excluded, asyncio.get_running_loop())
        try:
            async with asyncio.timeout(timeout_s):
                placement = await asyncio.shield(ticket.future)
        except TimeoutError:
            self._withdraw(ticket)
            return Rejection(ticket.id, "queue_timeout", budget_s=timeout_s)
        except asyncio.CancelledError:
            self._withdraw(ticket)
            raise
        if isinstance(placement, Rejection):
            return placement
        seat, dispatched_at = self._seats[ticket.id]
        return Lease(
            ticket.id, placement.backend, dispatched_at, seat, placement.priority, placement.model
        )

    def submit(
        self, demand: Demand, loop: asyncio.AbstractEventLoop, excluded: Collection[str] = ()
    ) -> tuple[int, asyncio.Future[Placement | Rejection]]:
        """Queue a request without waiting: its future resolves to a Placement or a
        Rejection.

        For drivers that run the scheduler on a clock of their own (the virtual-time
        benchmark); a server uses ``acquire``."""
        ticket = self._enqueue(demand, excluded, loop)
        return ticket.id, ticket.future

    def _enqueue(
        self, demand: Demand, excluded: Collection[str], loop: asyncio.AbstractEventLoop
    ) -> _Ticket:
        excluded_set = frozenset(excluded)
        if self.pressure is not None and demand.variants:
            demand = first_route(demand, self.pressure)
        # Cold start: a model some backend is meant to serve waits for one to be ready (until
        # its deadline) rather than failing; only a model no backend could serve fails now.
        routed = self._servable(demand, excluded_set)
        ticket = _Ticket(next(self._ids), routed or demand, excluded_set, loop.create_future())
        if routed is None:
            ticket.future.set_result(Rejection(ticket.id, "no_backend"))
            return ticket
        self._waiting[ticket.id] = ticket
        if self.fair is not None:
            self._arrived[(demand.model, demand.tenant)] = self._clock()
        self.schedule()
        return ticket

    def _withdraw(self, ticket: _Ticket) -> None:
        """Take a ticket out of the queue; a slot granted in the same instant is given back."""
        self._waiting.pop(ticket.id, None)
        future = ticket.future
        if future.done() and not future.cancelled() and future.exception() is None:
            if isinstance(future.result(), Placement):
                self.finish(ticket.id, served=False)
                self.schedule()
        elif not future.done():
            future.cancel()

    def seat_of(self, ticket: int) -> S | None:
        """A placed request's seat (for drivers of ``submit``), until it is released."""
        held = self._seats.get(ticket)
        return held[0] if held is not None else None

    def release(self, lease: Lease[S], *, served: bool = True) -> None:
        """Give a lease's seat back; ``served`` False when nothing was sent on it."""
        self.finish(lease.ticket, served=served)
        self.schedule()

    def finish(self, ticket: int, *, served: bool = True) -> None:
        """A dispatched request ended: its seat is free, and its tenant's service is
        corrected from the predicted reply to the tokens it really generated (or, when it
        was never sent, refunded)."""
        held = self._seats.pop(ticket, None)
        request = self._fleet.unseat(held[0]) if held is not None else None
        if request is None or self.fair is None:
            return
        if served:
            prompt, decode = 0, request.tokens - request.predicted_tokens
        else:
            prompt, decode = -request.prompt_tokens, -request.predicted_tokens
        self.fair.charge(request.tenant, prompt, decode, self._clock())

    def snapshot(self, now: float | None = None) -> tuple[list[WaitingView], list[BackendView]]:
        self._rank(self._clock() if now is None else now)
        self._look_up_prefixes()
        waiting = [t.view() for t in self._waiting.values()]
        wanted = frozenset(t.demand.model for t in self._waiting.values())
        backends = self._fleet.views(self.peer_load, self._rolling, wanted)
        return waiting, backends

    def _look_up_prefixes(self) -> None:
        """Each waiting request's expected cache hits per backend: looked up whole when it
        is new, and since then only on the backends whose index changed."""
        index = self.prefix
        if index is None:
            return
        capacities = self._fleet.capacities()
        for name, capacity in capacities:
            index.set_capacity(name, capacity)
        index.retain({name for name, _ in capacities})
        changed = index.changed_since(self._prefix_version)
        self._prefix_version = index.version
        for ticket in self._waiting.values():
            d = ticket.demand
            if d.session is not None:
                ticket.affine = self._sessions.get(d.session)
            if not d.prefix:
                continue
            if ticket._view is None:
                found = index.cached_tokens(d.prefix, d.prompt_tokens)
            elif changed:
                found = dict(ticket.cached)
                for name in changed:
                    tokens = index.cached_on(name, d.prefix, d.prompt_tokens)
                    if tokens:
                        found[name] = tokens
                    else:
                        found.pop(name, None)
            else:
                continue
            if found != ticket.cached:
                ticket.cached = found

    def _rank(self, now: float) -> None:
        """Each waiting request's fair-share rank, from its tenant's recent service, and the
        slots on its model it must leave free: ``reserve_slots`` for each tenant ranked below it
        that has used the model within ``active_s`` (waiting now, or arrived since)."""
        fair = self.fair
        if fair is None:
            return
        horizon = now - fair.rules.active_s
        for key in [k for k, at in self._arrived.items() if at < horizon]:
            del self._arrived[key]
        active = {(t.demand.model, t.demand.tenant) for t in self._waiting.values()}
        active.update(self._arrived)
        tenants = {tenant for _, tenant in active}
        if len(tenants) == 1:
            for ticket in self._waiting.values():
                ticket.rank = ticket.leave_slots = 0
            return
        ranks = fair.ranks(tenants, now)
        by_model: dict[str, list[int]] = {}
        for model, tenant in active:
            by_model.setdefault(model, []).append(ranks[tenant])
        for ticket in self._waiting.values():
            d = ticket.demand
            ticket.rank = rank = ranks[d.tenant]
            below = sum(1 for r in by_model[d.model] if r < rank)
            ticket.leave_slots = fair.rules.reserve_slots * below

    def _rolling(self, name: str) -> RollingView | None:
        place = self.instances.get(name)
        if place is None:
            return None
        instance, position = place
        active = self._active.get(instance)
        if active is None or active.backend != name:
            return RollingView(instance, position)
        return RollingView(instance, position, active.since, active.sent_prompts)

    def active_backends(self) -> dict[str, str]:
        """Instance -> its active backend, as this replica rolls them."""
        return {instance: a.backend for instance, a in self._active.items()}

    def schedule(self) -> None:
        """Run the policy over the current snapshot and carry out its decisions."""
        if not self._waiting:
            return
        now = self._clock()
        while self._pass(now):
            pass  # requests were queued again for a variant: their new queue decides them now
        if self.pressure is not None and self.pressure.any_on():
            self.pressure.settle(now, Counter(t.demand.asked for t in self._waiting.values()))

    def _pass(self, now: float) -> bool:
        """One run of the policy, carried out; True when some refused request was queued
        again for another route instead (``scheduling.degrade``)."""
        waiting, backends = self.snapshot(now)
        plan = self.policy(waiting, backends, now)
        rerouted = False
        for rejection in plan.rejections:
            ticket = self._waiting[rejection.ticket]
            if self._reroute(ticket, rejection, now):
                rerouted = True
            else:
                self._reject(self._waiting.pop(rejection.ticket), rejection, now)
        for placement in plan.placements:
            ticket = self._waiting.pop(placement.ticket)
            name, d = placement.backend, ticket.demand
            if self.pressure is not None:
                self.pressure.observe(d.model, False, now)
            seat = self._fleet.seat(name, ticket.id, d, ticket.cached.get(name, 0), now)
            self._seats[ticket.id] = (seat, now)
            if self.prefix is not None:
                self.prefix.record(name, d.prefix)
            if d.session is not None:
                self._sessions[d.session] = name
                self._sessions.move_to_end(d.session)
                if len(self._sessions) > MAX_SESSIONS:
                    self._sessions.popitem(last=False)
            if self.fair is not None:
                self.fair.charge(d.tenant, d.prompt_tokens, d.predicted_tokens, now)
            ticket.future.set_result(replace(placement, model=d.model))
        self._active.update(plan.activations)
        for ticket_id in plan.committed:
            if ticket_id in self._waiting:
                self._waiting[ticket_id].committed = True
        for ticket_id, credit in plan.credits.items():
            if ticket_id in self._waiting:
                self._waiting[ticket_id].credit = credit
        return rerouted

    def _servable(self, d: Demand, excluded: frozenset[str]) -> Demand | None:
        """``d``, or its first later route, that some backend not excluded is meant to serve."""
        routed: Demand | None = d
        while routed is not None and not self._fleet.serves(routed.model, excluded):
            routed = next_route(routed)
        return routed

    def _reroute(self, ticket: _Ticket, rejection: Rejection, now: float) -> bool:
        """A refusal for its targets counts toward its model's pressure; while degrading is
        on there, the request is queued again for its next route that some backend serves,
        with its own deadline, instead of being refused."""
        pressure, d = self.pressure, ticket.demand
        if pressure is None or rejection.reason not in GUARD_REFUSALS:
            return False
        pressure.observe(d.model, True, now)
        if not d.variants or not pressure.on(d.asked):
            return False
        routed = next_route(d)
        routed = None if routed is None else self._servable(routed, ticket.excluded)
        if routed is None:
            return False
        ticket.demand = routed
        ticket.cached, ticket.affine, ticket.committed, ticket._view = {}, None, False, None
        return True

    def _reject(self, ticket: _Ticket, rejection: Rejection, now: float) -> None:
        budget = max(0.0, ticket.demand.deadline - now)
        ticket.future.set_result(replace(rejection, budget_s=budget))

    async def run_ticks(self, interval_s: float) -> None:
        """Re-run the policy while requests wait: their budgets shrink, credits grow."""
        while True:
            await asyncio.sleep(interval_s)
            self.schedule()
