"""The embedded store: one process, no Redis. Same semantics as the Redis store."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence

from gateway.state.load import AdmissionRule, Grant, LeaseWeight, LoadTotals, admits
from gateway.state.store import ModelBlob, StaleVersion, Versioned


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._config: Versioned | None = None
        self._changed = asyncio.Event()
        self._leases: dict[str, dict[str, tuple[float, LeaseWeight]]] = {}
        self._samples: list[str] = []
        self._model: ModelBlob | None = None
        self._keys: dict[str, str] = {}

    async def get_config(self) -> Versioned | None:
        return self._config

    async def put_config(self, payload: str, expected_version: int | None) -> int:
        current = self._config.version if self._config is not None else 0
        if expected_version is not None and expected_version != current:
            raise StaleVersion(current)
        self._config = Versioned(current + 1, payload)
        self._changed.set()
        return current + 1

    def _live(self, backend: str) -> dict[str, tuple[float, LeaseWeight]]:
        now = self._clock()
        leases = self._leases.setdefault(backend, {})
        for lease in [lease for lease, (expiry, _) in leases.items() if expiry <= now]:
            del leases[lease]
        return leases

    def _totals(self, backend: str) -> LoadTotals:
        return LoadTotals.of([weight for _, weight in self._live(backend).values()])

    async def admit_lease(
        self, backend: str, lease: str, weight: LeaseWeight, rule: AdmissionRule, ttl_s: float
    ) -> Grant:
        leases = self._live(backend)
        if lease not in leases:
            held = self._totals(backend)
            if not admits(rule, held, weight):
                return Grant(False, held)
        leases[lease] = (self._clock() + ttl_s, weight)
        return Grant(True, self._totals(backend))

    async def release_lease(self, backend: str, lease: str) -> None:
        self._leases.get(backend, {}).pop(lease, None)

    async def sync_leases(
        self, held: Mapping[str, Mapping[str, LeaseWeight]], ttl_s: float
    ) -> dict[str, LoadTotals]:
        # This store never loses its state while the process lives: renew, never re-register.
        expiry = self._clock() + ttl_s
        for backend, mine in held.items():
            leases = self._live(backend)
            for lease, weight in mine.items():
                if lease in leases:
                    leases[lease] = (expiry, weight)
        return {backend: self._totals(backend) for backend in held}

    async def load_totals(self, backend: str) -> LoadTotals:
        return self._totals(backend)

    async def push_samples(self, lines: Sequence[str], keep: int) -> None:
        self._samples.extend(lines)
        del self._samples[: max(0, len(self._samples) - keep)]

    async def recent_samples(self) -> list[str]:
        return list(self._samples)

    async def put_model(self, blob: ModelBlob) -> None:
        self._model = blob

    async def model_version(self) -> str | None:
        return self._model.version if self._model is not None else None

    async def get_model(self) -> ModelBlob | None:
        return self._model

    async def get_keys(self) -> dict[str, str]:
        return dict(self._keys)

    async def put_key(self, key_id: str, record: str) -> None:
        self._keys[key_id] = record
        self._changed.set()

    async def wait_for_change(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()
        self._changed.clear()

    async def close(self) -> None:
        return None
