"""A request's slot on a backend, from one owner: ``async with slots.hold(...) as slot``
takes this replica's slot (the scheduler's) and, with replicas sharing load, the shared
store's admission of it too; leaving the block gives both back, however the request ended.

A slot the shared store refuses goes back to the queue (same deadline, so the same place in
LDF order) and is asked for again after a short back-off, until the queue timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass

from gateway.errors import NoBackendAvailable
from gateway.fleet import Backend, Seat
from gateway.metrics import GatewayMetrics
from gateway.refusals import refusal
from gateway.scheduling.policy import SloPolicy
from gateway.scheduling.scheduler import Lease, Scheduler
from gateway.scheduling.snapshot import Demand, Rejection
from gateway.state.load import AdmissionRule, LeaseWeight
from gateway.state.sharing import LoadSharing


def lease_weight(wanted: Demand) -> LeaseWeight:
    """What a request weighs on its backend in the shared store. A best-effort request's
    target binds no one: it was placed without a guarantee."""
    return LeaseWeight(
        kv_tokens=wanted.reserve_tokens,
        context=wanted.prompt_tokens + wanted.predicted_tokens // 2,
        tpot_s=wanted.tpot_s if wanted.rejectable else math.inf,
    )


@dataclass(slots=True)
class Slot:
    lease: Lease[Seat]
    served: bool = True  # False once it is known that nothing was sent on it

    @property
    def backend(self) -> Backend:
        return self.lease.seat.backend


class Slots:
    def __init__(
        self,
        scheduler: Scheduler[Seat],
        metrics: GatewayMetrics,
        sharing: LoadSharing | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scheduler = scheduler
        self._metrics = metrics
        self._sharing = sharing
        self._clock = clock

    @contextlib.asynccontextmanager
    async def hold(
        self, wanted: Demand, excluded: Collection[str], until: float
    ) -> AsyncIterator[Slot]:
        """A slot for ``wanted`` (not on ``excluded``) by ``until``, given back on leaving.
        A scheduler's refusal is raised as its HTTP error (``refusals``)."""
        slot = Slot(await self._take(wanted, excluded, until))
        try:
            yield slot
        finally:
            self._give_back(slot.lease, served=slot.served)

    async def _take(self, wanted: Demand, excluded: Collection[str], until: float) -> Lease[Seat]:
        delay = 0.005
        timeout_s = max(until - self._clock(), 0.001)
        while True:
            lease = await self._scheduler.acquire(wanted, timeout_s=timeout_s, excluded=excluded)
            if isinstance(lease, Rejection):
                raise refusal(lease, wanted)
            if self._sharing is None:
                return lease
            try:
                grant = await self._sharing.take(
                    lease.backend,
                    lease.ticket,
                    lease_weight(wanted),
                    self._rule(lease.seat.backend),
                )
            except BaseException:
                self._give_back(lease, served=False)
                raise
            if grant.admitted:
                return lease
            self._scheduler.release(lease, served=False)
            self._metrics.shared_refusals.labels(lease.backend).inc()
            if self._clock() + delay > until:
                raise NoBackendAvailable(
                    f"no backend slot for model {wanted.model!r} within the queue timeout: "
                    f"backends are full across gateway replicas",
                    headers={"Retry-After": "1"},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            timeout_s = max(until - self._clock(), 0.001)

    def _rule(self, backend: Backend) -> AdmissionRule:
        """The admission rule the shared store applies: the policy's VBS rule when it runs
        one, else the in-flight bound alone."""
        policy = self._scheduler.policy
        if isinstance(policy, SloPolicy) and policy.vbs:
            return AdmissionRule(
                backend.config.max_in_flight,
                backend.kv_capacity,
                backend.itl.params,
                policy.epsilon,
                policy.admit_margin,
            )
        return AdmissionRule(backend.config.max_in_flight)

    def _give_back(self, lease: Lease[Seat], *, served: bool) -> None:
        self._scheduler.release(lease, served=served)
        if self._sharing is not None:
            self._sharing.give_back(lease.backend, lease.ticket)
