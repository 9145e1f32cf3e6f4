"""What the gateway keeps in shared state, behind one protocol with two implementations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.quota import QuotaAsk, QuotaState, Settlement
from gateway.state.load import AdmissionRule, Grant, LeaseWeight, LoadTotals


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


@dataclass(frozen=True, slots=True)
class ModelBlob:
    """A length model as the replicas share it: its version, manifest and weights."""

    version: str
    manifest: str
    weights: bytes


class Store(Protocol):
    """Versioned config, cross-replica load accounting, and what the predictor learns."""

    async def get_config(self) -> Versioned | None:
        """The current config, or None when none was ever written."""
        ...

    async def put_config(self, payload: str, expected_version: int | None) -> int:
        """Write a new version if ``expected_version`` is current (None: unconditionally);
        return the new version, or raise StaleVersion."""
        ...

    async def admit_lease(
        self, backend: str, lease: str, weight: LeaseWeight, rule: AdmissionRule, ttl_s: float
    ) -> Grant:
        """Record ``lease`` on ``backend`` if the backend, with every replica's leases and
        this one, passes ``rule``: checked and recorded atomically. Renewing a lease already
        held always succeeds. A lease not renewed within ``ttl_s`` (its replica died) lapses."""
        ...

    async def release_lease(self, backend: str, lease: str) -> None: ...

    async def sync_leases(
        self, held: Mapping[str, Mapping[str, LeaseWeight]], ttl_s: float
    ) -> dict[str, LoadTotals]:
        """Renew this replica's leases (backend -> lease -> weight) and return each named
        backend's totals over all replicas. Where the store lost its state (it restarted
        empty), or this replica could not reach it for a while, the leases are registered
        again, whatever the rule: they are in flight already."""
        ...

    async def load_totals(self, backend: str) -> LoadTotals: ...

    async def push_samples(self, lines: Sequence[str], keep: int) -> None:
        """Append completed-request samples (JSONL lines), keeping the newest ``keep``."""
        ...

    async def recent_samples(self) -> list[str]:
        """Every replica's samples, oldest first."""
        ...

    async def put_model(self, blob: ModelBlob) -> None:
        """Publish a length model for every replica to load."""
        ...

    async def model_version(self) -> str | None: ...

    async def get_model(self) -> ModelBlob | None: ...

    async def get_keys(self) -> dict[str, str]:
        """Every client key record (id -> JSON; digests, never secrets)."""
        ...

    async def put_key(self, key_id: str, record: str) -> None:
        """Write one key record and announce it like a config change."""
        ...

    async def wait_for_change(self, timeout_s: float) -> None:
        """Return when a config change is announced, or after ``timeout_s`` at the latest
        (announcements can be lost, so callers also compare versions)."""
        ...

    async def close(self) -> None: ...


class QuotaStore(Protocol):
    """Tenants' rate limits shared by every replica (``gateway.quota`` gives the arithmetic)."""

    async def take_quota(self, tenant: str, ask: QuotaAsk, lease: str, ttl_s: float) -> QuotaState:
        """Admit one request against ``tenant``'s limits, atomically: take a request, its
        token reservation and (with a concurrency limit) a lease lapsing after ``ttl_s``
        unless renewed; or take nothing."""
        ...

    async def settle_quota(
        self,
        replica: str,
        settlements: Sequence[Settlement],
        lease_ttl_s: float,
        replica_ttl_s: float,
    ) -> int:
        """Apply one replica's settlements in one call; return how many replicas were seen
        within ``replica_ttl_s``."""
        ...

    async def quota_usage(self, tenant: str, ask: QuotaAsk) -> QuotaState:
        """``tenant``'s buckets now, taking nothing."""
        ...
