"""Every Redis key the gateway uses, under one configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "sluice"

    @property
    def config(self) -> str:
        """Hash: ``version`` (int) and ``payload`` (JSON). Persistent."""
        return f"{self.prefix}:config"

    @property
    def config_channel(self) -> str:
        """Pub/sub channel announcing a new config version."""
        return f"{self.prefix}:config:changed"

    def inflight(self, backend: str) -> str:
        """Sorted set of lease ids by expiry time, per backend. Transient: has a TTL."""
        return f"{self.prefix}:inflight:{backend}"
