"""The in-flight bound of each backend, held across gateway replicas.

A replica's scheduler places a request on its own view of the fleet; before the request is
sent, it must also hold one of the backend's ``max_in_flight`` slots in the shared store
(taken and counted atomically there). So all replicas together never have more than
``max_in_flight`` requests in flight on a backend. A slot is released when its request ends,
and expires after ``ttl_s`` if its replica dies. With the store unreachable, replicas fall
back to their own accounting until it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

from gateway.state.store import Store, StoreUnavailable

log = logging.getLogger(__name__)


class SharedSlots:
    def __init__(
        self, store: Store, *, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._replica = uuid.uuid4().hex[:12]
        self._pending: set[asyncio.Task[None]] = set()

    def lease_id(self, ticket: int) -> str:
        return f"{self._replica}:{ticket}"

    async def take(self, backend: str, ticket: int, limit: int, until: float) -> bool:
        """Wait for a shared slot until the clock reaches ``until``; False if none came."""
        delay = 0.005
        while True:
            try:
                if await self._store.acquire_slot(
                    backend, self.lease_id(ticket), limit, self._ttl_s
                ):
                    return True
            except StoreUnavailable as exc:
                log.warning("shared slots unavailable, using local accounting: %s", exc)
                return True
            if self._clock() + delay > until:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def give_back(self, backend: str, ticket: int) -> None:
        """Release in the background: the request's handler may be ending by cancellation."""
        task = asyncio.get_running_loop().create_task(self._release(backend, ticket))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _release(self, backend: str, ticket: int) -> None:
        with contextlib.suppress(StoreUnavailable):  # if so, the slot expires after its TTL
            await self._store.release_slot(backend, self.lease_id(ticket))
