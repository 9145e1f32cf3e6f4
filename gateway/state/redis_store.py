"""The Redis store (redis-py asyncio): shared by every gateway replica on one Redis."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.state.keys import Keys
from gateway.state.store import StaleVersion, StoreUnavailable, Versioned

# Compare-and-set of the config.
# KEYS[1]: config hash (fields version, payload). KEYS[2]: change channel.
# ARGV[1]: expected version, or "" for an unconditional write. ARGV[2]: payload.
# Returns {1, new_version} on success, {0, current_version} when ARGV[1] is stale.
PUT_CONFIG = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= current then
  return {0, current}
end
local new = current + 1
redis.call('HSET', KEYS[1], 'version', new, 'payload', ARGV[2])
redis.call('PUBLISH', KEYS[2], new)
return {1, new}
"""

# One in-flight slot on a backend, across replicas.
# KEYS[1]: sorted set of lease ids scored by expiry (ms, Redis server time).
# ARGV[1]: lease id. ARGV[2]: limit. ARGV[3]: ttl in ms.
# Returns 1 when the lease holds a slot (new or renewed), 0 when all are taken.
ACQUIRE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not held and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return 1
"""

# Slots in use on a backend once expired leases are dropped.
# KEYS[1]: the backend's lease set. Returns the count.
COUNT_SLOTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""

_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisStore:
    def __init__(self, url: str, *, prefix: str = "sluice", timeout_s: float = 1.0) -> None:
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=True,
        )
        self.keys = Keys(prefix)
        self._put = self._redis.register_script(PUT_CONFIG)
        self._acquire = self._redis.register_script(ACQUIRE_SLOT)
        self._count = self._redis.register_script(COUNT_SLOTS)
        self._pubsub: PubSub | None = None

    async def get_config(self) -> Versioned | None:
        try:
            found = await self._redis.hgetall(self.keys.config)
        except _DOWN as exc:
            raise StoreUnavailable(str(exc)) from exc
        if not found:
            return None
        return Versioned(int(found["version"]), str(found["payload"]))

    async def put_config(self, payload: str, expected_version: int | None) -> int:
        expected = "" if expected_version is None else str(expected_version)
        try:
            ok, version = await self._put(
                keys=[self.keys.config, self.keys.config_channel], args=[expected, payload]
            )
        except _DOWN as exc:
            raise StoreUnavailable(str(exc)) from exc
        if not ok:
            raise StaleVersion(int(version))
        return int(version)

    async def acquire_slot(self, backend: str, lease: str, limit: int, ttl_s: float) -> bool:
        try:
            granted = await self._acquire(
                keys=[self.keys.inflight(backend)], args=[lease, limit, int(ttl_s * 1000)]
            )
        except _DOWN as exc:
            raise StoreUnavailable(str(exc)) from exc
        return bool(granted)

    async def release_slot(self, backend: str, lease: str) -> None:
        try:
            await self._redis.zrem(self.keys.inflight(backend), lease)
        except _DOWN as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def slots_in_use(self, backend: str) -> int:
        try:
            return int(await self._count(keys=[self.keys.inflight(backend)]))
        except _DOWN as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def wait_for_change(self, timeout_s: float) -> None:
        try:
            if self._pubsub is None:
                self._pubsub = self._redis.pubsub()
                await self._pubsub.subscribe(self.keys.config_channel)
            await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout_s)
        except _DOWN:
            # Redis is away: wait out the interval; the next call subscribes again.
            self._pubsub = None
            await asyncio.sleep(timeout_s)

    async def close(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(*_DOWN):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()
