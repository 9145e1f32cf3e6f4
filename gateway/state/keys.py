"""Every Redis key the gateway uses, under one configurable prefix.

The prefix is a hash tag (``{sluice}:...``): every key lands in one hash slot, so that a
Redis Cluster (or a managed service in cluster mode) runs each Lua script, which may touch
several keys, on one node. Sluice's keys then live on one shard; README, "Redis Cluster",
gives what one shard carries.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLES_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "sluice"

    @property
    def tag(self) -> str:
        return f"{{{self.prefix}}}"

    @property
    def config(self) -> str:
        """Hash: ``version`` (int) and ``payload`` (JSON). Persistent."""
        return f"{self.tag}:config"

    @property
    def config_channel(self) -> str:
        """Pub/sub channel announcing a new config version."""
        return f"{self.tag}:config:changed"

    @property
    def samples(self) -> str:
        """List of completed-request samples (JSONL lines), oldest first, trimmed to the newest
        ``samples_kept``. Refreshed TTL of SAMPLES_TTL_S: traffic long gone is not kept."""
        return f"{self.tag}:predictor:samples"

    @property
    def model(self) -> str:
        """Hash: the shared length model's ``version``, ``manifest`` and base64 ``weights``.
        Persistent: replicas started later load it."""
        return f"{self.tag}:predictor:model"

    @property
    def client_keys(self) -> str:
        """Hash of client key id -> its record (JSON: tenant, SHA-256 digest, revocation),
        never the secret. Persistent."""
        return f"{self.tag}:keys"

    @property
    def epoch(self) -> str:
        """String: a random id set when the store is first used; its loss tells replicas that
        the store restarted empty, so they register their leases again. Persistent."""
        return f"{self.tag}:epoch"

    def lease_expiry(self, backend: str) -> str:
        """Sorted set of a backend's lease ids by expiry time. Transient: has a TTL."""
        return f"{self.tag}:lease:{backend}:expiry"

    def lease_weights(self, backend: str) -> str:
        """Hash of a backend's lease id -> weight ("kv context tpot_us"). Transient: has a
        TTL."""
        return f"{self.tag}:lease:{backend}:weight"

    def quota(self, tenant: str) -> str:
        """Hash of a tenant's rate-limit buckets (levels and when). Transient: expires once
        its buckets would be full again."""
        return f"{self.tag}:tenant:{tenant}:quota"

    def quota_leases(self, tenant: str) -> str:
        """Sorted set of a tenant's concurrent request leases by expiry. Transient: has a
        TTL."""
        return f"{self.tag}:tenant:{tenant}:leases"

    def quota_ends(self, tenant: str) -> str:
        """Sorted set of the same leases by predicted end (when a refused request may try
        again). Transient: has a TTL."""
        return f"{self.tag}:tenant:{tenant}:ends"

    @property
    def replicas(self) -> str:
        """Sorted set of gateway replicas by when last seen (rate-limit settlement): how many
        share the limits when Redis is away. Transient: has a TTL."""
        return f"{self.tag}:replicas"
