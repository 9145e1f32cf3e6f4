"""What the gateway keeps in shared state, behind one protocol with two implementations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StaleVersion(Exception):
    """A compare-and-set write named a version that is no longer current."""

    def __init__(self, current: int) -> None:
        super().__init__(f"config is at version {current}")
        self.current = current


class StoreUnavailable(Exception):
    """The store cannot be reached; callers keep serving on what they have."""


@dataclass(frozen=True, slots=True)
class Versioned:
    version: int
    payload: str


class Store(Protocol):
    """Versioned config and cross-replica load accounting."""

    async def get_config(self) -> Versioned | None:
        """The current config, or None when none was ever written."""
        ...

    async def put_config(self, payload: str, expected_version: int | None) -> int:
        """Write a new version if ``expected_version`` is current (None: unconditionally);
        return the new version, or raise StaleVersion."""
        ...

    async def acquire_slot(self, backend: str, lease: str, limit: int, ttl_s: float) -> bool:
        """Take one of ``limit`` in-flight slots on ``backend`` for ``lease``, across all
        replicas; a slot not released within ``ttl_s`` (a crashed replica) is reclaimed."""
        ...

    async def release_slot(self, backend: str, lease: str) -> None: ...

    async def slots_in_use(self, backend: str) -> int: ...

    async def wait_for_change(self, timeout_s: float) -> None:
        """Return when a config change is announced, or after ``timeout_s`` at the latest
        (announcements can be lost, so callers also compare versions)."""
        ...

    async def close(self) -> None: ...
