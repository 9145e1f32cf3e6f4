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

from gateway.fleet import Backend, Fleet, InFlight
from gateway.prefix_index import PrefixIndex
from gateway.scheduling.fairness import FairShare, ShareRules
from gateway.scheduling.policy import Policy, least_loaded
from gateway.scheduling.snapshot import (
    Activation,
    BackendView,
    Demand,
    InFlightView,
    Placement,
    Rejection,
    RollingView,
    WaitingView,
)
from gateway.state.load import LoadTotals

MAX_SESSIONS = 100_000  # sessions whose last backend is remembered, least recent dropped


@dataclass(eq=False, slots=True)
class _Ticket:
    id: int
    demand: Demand
    excluded: frozenset[str]
    future: asyncio.Future[Placement | Rejection] = field(repr=False)
    credit: float = 0.0
    rank: int = 0
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
            )
        return view


@dataclass(frozen=True, slots=True)
class Lease:
    """A slot on one backend, held from dispatch until ``Scheduler.release``."""

    ticket: int
    backend: str
    dispatched_at: float
    inflight: InFlight
    owner: Backend  # the backend object granted, even if the fleet replaces its name later
    priority: int | None = None


class Scheduler:
    def __init__(
        self,
        fleet: Fleet,
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
        self._sessions: OrderedDict[str, str] = OrderedDict()  # session -> its last backend
        self._prefix_version = -1
        self._waiting: dict[int, _Ticket] = {}
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
        in_flight = Counter(r.tenant for b in self._fleet for r in b.inflight.values())
        return waiting, in_flight

    async def acquire(
        self, demand: Demand, *, timeout_s: float, excluded: Collection[str] = ()
    ) -> Lease | Rejection:
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
        backend = self._fleet[placement.backend]
        inflight = backend.inflight[ticket.id]
        return Lease(
            ticket.id,
            placement.backend,
            inflight.dispatched_at,
            inflight,
            backend,
            placement.priority,
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
        ticket = _Ticket(next(self._ids), demand, excluded_set, loop.create_future())
        # Cold start: a model some backend is meant to serve waits for one to be ready (until
        # its deadline) rather than failing; only a model no backend could serve fails now.
        if not any(b.name not in excluded_set for b in self._fleet.expected_for(demand.model)):
            ticket.future.set_result(Rejection(ticket.id, "no_backend"))
            return ticket
        self._waiting[ticket.id] = ticket
        self.schedule()
        return ticket

    def _withdraw(self, ticket: _Ticket) -> None:
        """Take a ticket out of the queue; a slot granted in the same instant is given back."""
        self._waiting.pop(ticket.id, None)
        future = ticket.future
        if future.done() and not future.cancelled() and future.exception() is None:
            placement = future.result()
            if isinstance(placement, Placement):
                self.finish(self._fleet[placement.backend], ticket.id, served=False)
                self.schedule()
        elif not future.done():
            future.cancel()

    def release(self, lease: Lease, *, served: bool = True) -> None:
        """Give a lease's slot back; ``served`` False when nothing was sent on it."""
        self.finish(lease.owner, lease.ticket, served=served)
        if lease.owner.draining:
            self._fleet.prune()
        self.schedule()

    def finish(self, backend: Backend, ticket: int, *, served: bool = True) -> None:
        """A dispatched request ended: its slot is free, and its tenant's service is
        corrected from the predicted reply to the tokens it really generated (or, when it
        was never sent, refunded)."""
        request = backend.inflight.get(ticket)
        backend.remove(ticket)
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
        backends = [
            BackendView(
                b.name,
                b.routable,
                b.models,
                b.in_flight,
                b.config.max_in_flight,
                b.config.weight,
                tuple(
                    InFlightView(
                        r.tpot_s,
                        r.prompt_tokens,
                        r.tokens,
                        r.predicted_tokens,
                        r.reserved_kv,
                        r.first_token_at is not None,
                        r.first_token_at,
                        r.cached_tokens,
                    )
                    for r in b.inflight.values()
                ),
                b.prefill.params,
                b.itl.params,
                b.kv_capacity,
                b.dispatched,
                self.peer_load(b.name),
                self._rolling(b.name),
            )
            for b in self._fleet
        ]
        return waiting, backends

    def _look_up_prefixes(self) -> None:
        """Each waiting request's expected cache hits per backend, again only when the index
        changed since."""
        index = self.prefix
        if index is None:
            return
        for backend in self._fleet:
            index.set_capacity(backend.name, backend.kv_capacity)
        changed = index.version != self._prefix_version
        self._prefix_version = index.version
        for ticket in self._waiting.values():
            d = ticket.demand
            if d.session is not None:
                ticket.affine = self._sessions.get(d.session)
            if d.prefix and (changed or ticket._view is None):
                found = index.cached_tokens(d.prefix, d.prompt_tokens)
                if found != ticket.cached:
                    ticket.cached = found

    def _rank(self, now: float) -> None:
        """Each waiting request's fair-share rank, from its tenant's recent service."""
        fair = self.fair
        if fair is None:
            return
        tenants = {t.demand.tenant for t in self._waiting.values()}
        if len(tenants) == 1:
            ranks: dict[str | None, int] = dict.fromkeys(tenants, 0)
        else:
            ranks = fair.ranks(tenants, now)
        for ticket in self._waiting.values():
            ticket.rank = ranks[ticket.demand.tenant]

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
        waiting, backends = self.snapshot(now)
        plan = self.policy(waiting, backends, now)
        for rejection in plan.rejections:
            self._reject(self._waiting.pop(rejection.ticket), rejection, now)
        for placement in plan.placements:
            ticket = self._waiting.pop(placement.ticket)
            backend = self._fleet[placement.backend]
            backend.dispatched += 1
            d = ticket.demand
            cached = ticket.cached.get(backend.name, 0)
            backend.inflight[ticket.id] = InFlight(
                ticket=ticket.id,
                tpot_s=d.tpot_s,
                prompt_tokens=d.prompt_tokens,
                predicted_tokens=d.predicted_tokens,
                reserved_kv=d.reserve_tokens,
                dispatched_at=now,
                pending_at_dispatch=backend.pending_prefill() + d.prompt_tokens - cached,
                tenant=d.tenant,
                cached_tokens=cached,
            )
            if self.prefix is not None:
                self.prefix.record(backend.name, d.prefix)
            if d.session is not None:
                self._sessions[d.session] = backend.name
                self._sessions.move_to_end(d.session)
                if len(self._sessions) > MAX_SESSIONS:
                    self._sessions.popitem(last=False)
            if self.fair is not None:
                self.fair.charge(d.tenant, d.prompt_tokens, d.predicted_tokens, now)
            ticket.future.set_result(placement)
        self._active.update(plan.activations)
        for ticket_id, credit in plan.credits.items():
            if ticket_id in self._waiting:
                self._waiting[ticket_id].credit = credit

    def _reject(self, ticket: _Ticket, rejection: Rejection, now: float) -> None:
        budget = max(0.0, ticket.demand.deadline - now)
        ticket.future.set_result(replace(rejection, budget_s=budget))

    async def run_ticks(self, interval_s: float) -> None:
        """Re-run the policy while requests wait: their budgets shrink, credits grow."""
        while True:
            await asyncio.sleep(interval_s)
            self.schedule()
