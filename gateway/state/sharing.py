"""One replica's side of the load shared across gateway replicas (ALGORITHMS.md §9).

A replica's scheduler places a request on its own view of the fleet, in which each backend
also carries the other replicas' load there as of the last sync. Before the request is sent,
its lease must be admitted by the shared store, which re-checks the same admission rule over
every replica's leases in one atomic step. So replicas together never push a backend past
what one gateway would admit. Per request that is two store round trips (admit, release);
besides, each replica renews its leases and reads every backend's totals once per sync
interval, in one round trip. With the store unreachable a replica admits on its own
accounting, and when the store returns it registers its leases again and repeats the
releases the store missed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable

from gateway.state.load import AdmissionRule, Grant, LeaseWeight, LoadTotals
from gateway.state.store import Store, StoreUnavailable

log = logging.getLogger(__name__)


class LoadSharing:
    def __init__(self, store: Store, *, ttl_s: float) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._replica = uuid.uuid4().hex[:12]
        self._held: dict[str, dict[str, LeaseWeight]] = {}
        self._others: dict[str, LoadTotals] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._unreleased: set[tuple[str, str]] = set()  # releases the store did not take
        self.reachable = True

    def lease_id(self, ticket: int) -> str:
        return f"{self._replica}:{ticket}"

    def others(self, backend: str) -> LoadTotals:
        """The other replicas' load on ``backend`` as last seen."""
        return self._others.get(backend, LoadTotals())

    async def take(
        self, backend: str, ticket: int, weight: LeaseWeight, rule: AdmissionRule
    ) -> Grant:
        """Ask the store to admit this request's lease; with the store away, admit it on this
        replica's own accounting (the scheduler already did)."""
        lease = self.lease_id(ticket)
        try:
            grant = await self._store.admit_lease(backend, lease, weight, rule, self._ttl_s)
        except StoreUnavailable as exc:
            self._unreachable(exc)
            grant = Grant(True, LoadTotals())
        else:
            self.reachable = True
        if grant.admitted:
            self._held.setdefault(backend, {})[lease] = weight
        if self.reachable:
            self._others[backend] = grant.totals.minus(self._mine(backend))
        return grant

    def give_back(self, backend: str, ticket: int) -> None:
        """Release in the background: the request's handler may be ending by cancellation.
        Also for a lease whose admission was interrupted: the store may have recorded it."""
        lease = self.lease_id(ticket)
        self._held.get(backend, {}).pop(lease, None)
        self._release_later(backend, lease)

    def _release_later(self, backend: str, lease: str) -> None:
        task = asyncio.get_running_loop().create_task(self._release(backend, lease))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _release(self, backend: str, lease: str) -> None:
        try:
            await self._store.release_lease(backend, lease)
        except StoreUnavailable:
            self._unreleased.add((backend, lease))  # tried again at each sync

    async def _release_unreleased(self) -> None:
        for backend, lease in list(self._unreleased):
            await self._store.release_lease(backend, lease)
            self._unreleased.discard((backend, lease))

    async def close(self, timeout_s: float) -> None:
        """At shutdown: finish the releases under way and give back whatever is still held,
        so that other replicas need not wait for these leases to lapse."""
        for backend, leases in self._held.items():
            for lease in list(leases):
                self._release_later(backend, lease)
            leases.clear()
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                await self._release_unreleased()
        except (StoreUnavailable, TimeoutError):
            log.warning("shutdown: %d lease releases left to lapse", len(self._unreleased))

    async def sync(self, backends: Iterable[str]) -> None:
        """Renew this replica's leases and refresh the other replicas' load per backend."""
        held = {name: dict(self._held.get(name, {})) for name in backends}
        for name, leases in self._held.items():
            held.setdefault(name, dict(leases))  # a drained backend's leases too
        try:
            await self._release_unreleased()
            totals = await self._store.sync_leases(held, self._ttl_s)
        except StoreUnavailable as exc:
            self._unreachable(exc)
            return
        if not self.reachable:
            log.info("shared state reachable again; leases registered")
        self.reachable = True
        self._others = {
            name: total.minus(LoadTotals.of(list(held[name].values())))
            for name, total in totals.items()
        }
        # A lease released while this sync was on its way may just have been registered
        # again (after a store restart): release it once more.
        for name, leases in held.items():
            for lease in leases.keys() - self._held.get(name, {}).keys():
                self._release_later(name, lease)

    async def run(
        self, backends: Callable[[], Iterable[str]], interval_s: float, then: Callable[[], None]
    ) -> None:
        """Sync every ``interval_s``; call ``then`` after each (the others' load changed)."""
        while True:
            await self.sync(backends())
            then()
            await asyncio.sleep(interval_s)

    def _mine(self, backend: str) -> LoadTotals:
        return LoadTotals.of(list(self._held.get(backend, {}).values()))

    def _unreachable(self, exc: StoreUnavailable) -> None:
        if self.reachable:
            log.warning("shared state unreachable, admitting on local accounting: %s", exc)
        self.reachable = False
        self._others.clear()  # stale: nothing is known of the others until the store is back
