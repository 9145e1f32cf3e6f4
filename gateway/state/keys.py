"""Every Redis key the gateway uses, under one configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass

SAMPLES_TTL_S = 7 * 24 * 3600


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

    @property
    def samples(self) -> str:
        """List of completed-request samples (JSONL lines), oldest first, trimmed to the newest
        ``samples_kept``. Refreshed TTL of SAMPLES_TTL_S: traffic long gone is not kept."""
        return f"{self.prefix}:predictor:samples"

    @property
    def model(self) -> str:
        """Hash: the shared length model's ``version``, ``manifest`` and base64 ``weights``.
        Persistent: replicas started later load it."""
        return f"{self.prefix}:predictor:model"

    @property
    def epoch(self) -> str:
        """String: a random id set when the store is first used; its loss tells replicas that
        the store restarted empty, so they register their leases again. Persistent."""
        return f"{self.prefix}:epoch"

    def lease_expiry(self, backend: str) -> str:
        """Sorted set of a backend's lease ids by expiry time. Transient: has a TTL."""
        return f"{self.prefix}:lease:{backend}:expiry"

    def lease_weights(self, backend: str) -> str:
        """Hash of a backend's lease id -> weight ("kv context tpot_us"). Transient: has a
        TTL."""
        return f"{self.prefix}:lease:{backend}:weight"
