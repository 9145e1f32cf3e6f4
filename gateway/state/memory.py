"""The embedded store: one process, no Redis. Same semantics as the Redis store."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from gateway.state.store import StaleVersion, Versioned


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._config: Versioned | None = None
        self._changed = asyncio.Event()
        self._slots: dict[str, dict[str, float]] = {}

    async def get_config(self) -> Versioned | None:
        return self._config

    async def put_config(self, payload: str, expected_version: int | None) -> int:
        current = self._config.version if self._config is not None else 0
        if expected_version is not None and expected_version != current:
            raise StaleVersion(current)
        self._config = Versioned(current + 1, payload)
        self._changed.set()
        return current + 1

    def _live(self, backend: str) -> dict[str, float]:
        now = self._clock()
        slots = self._slots.setdefault(backend, {})
        for lease in [lease for lease, expiry in slots.items() if expiry <= now]:
            del slots[lease]
        return slots

    async def acquire_slot(self, backend: str, lease: str, limit: int, ttl_s: float) -> bool:
        slots = self._live(backend)
        if lease not in slots and len(slots) >= limit:
            return False
        slots[lease] = self._clock() + ttl_s
        return True

    async def release_slot(self, backend: str, lease: str) -> None:
        self._slots.get(backend, {}).pop(lease, None)

    async def slots_in_use(self, backend: str) -> int:
        return len(self._live(backend))

    async def wait_for_change(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()
        self._changed.clear()

    async def close(self) -> None:
        return None
