"""A circuit breaker in front of the shared store.

A Redis that is killed fails fast by itself (connection refused); one that is frozen
(stopped, swapping, partitioned without a reset) makes every call wait for its socket
timeout, and every request with it. So every call has a short bound of its own, and the first
call that fails or overruns it opens the breaker: from then on calls fail at once (callers
fall back to local accounting, as when Redis is down) while one background probe pings the
store until it answers, which closes the breaker again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gateway.state.store import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class Breaker:
    def __init__(
        self,
        ping: Callable[[], Awaitable[object]],
        *,
        timeout_s: float,
        probe_every_s: float = 0.2,
        down: tuple[type[BaseException], ...] = (OSError,),
    ) -> None:
        self._ping = ping
        self.timeout_s = timeout_s
        self._probe_every_s = probe_every_s
        self._down = down
        self._probe: asyncio.Task[None] | None = None
        self.trips = 0
        self.skipped = 0  # calls answered at once, unsent, while open

    @property
    def open(self) -> bool:
        return self._probe is not None

    async def call(self, make: Callable[[], Awaitable[T]], *, timeout_s: float | None = None) -> T:
        """Run one store call within its bound; raise StoreUnavailable at once while open."""
        if self._probe is not None:
            self.skipped += 1
            raise StoreUnavailable("shared state unavailable (circuit open, probing)")
        bound = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(bound):
                return await make()
        except TimeoutError:
            self._trip(f"a call took longer than {bound:g}s")
            raise StoreUnavailable(f"shared state did not answer within {bound:g}s") from None
        except self._down as exc:
            self._trip(str(exc))
            raise StoreUnavailable(str(exc)) from exc

    def _trip(self, why: str) -> None:
        if self._probe is not None:
            return
        self.trips += 1
        log.warning("shared state circuit open (%s): serving on local accounting", why)
        self._probe = asyncio.get_running_loop().create_task(self._until_back())

    async def _until_back(self) -> None:
        while True:
            await asyncio.sleep(self._probe_every_s)
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._ping()
            except TimeoutError:
                continue
            except self._down:
                continue
            log.info("shared state answers again: circuit closed")
            self._probe = None
            return

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None
