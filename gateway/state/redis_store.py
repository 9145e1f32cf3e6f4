"""The Redis store (redis-py asyncio): shared by every gateway replica on one Redis."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, MasterDownError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.state.breaker import Breaker
from gateway.state.keys import SAMPLES_TTL_S, Keys
from gateway.state.load import AdmissionRule, Grant, LeaseWeight, LoadTotals
from gateway.state.store import ModelBlob, StaleVersion, StoreUnavailable, Versioned

log = logging.getLogger(__name__)

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

# Shared Lua helpers: the clock, dropping lapsed leases, and totalling a backend's leases.
# A backend's leases live in two keys: a sorted set of lease ids scored by expiry (ms, Redis
# server time) and a hash of lease id -> "kv_tokens context tpot_us" (tpot_us -1: none).
_LEASE_LIB = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function drop_lapsed(expiry, weights, now)
  local lapsed = redis.call('ZRANGEBYSCORE', expiry, '-inf', now)
  for _, id in ipairs(lapsed) do redis.call('HDEL', weights, id) end
  redis.call('ZREMRANGEBYSCORE', expiry, '-inf', now)
end
local function totals(weights, skip)
  local count, kv, ctx, tight = 0, 0, 0, -1
  local found = false
  local fields = redis.call('HGETALL', weights)
  for i = 1, #fields, 2 do
    if fields[i] == skip then
      found = true
    else
      local k, c, p = string.match(fields[i + 1], '(%S+) (%S+) (%S+)')
      count = count + 1
      kv = kv + tonumber(k)
      ctx = ctx + tonumber(c)
      p = tonumber(p)
      if p >= 0 and (tight < 0 or p < tight) then tight = p end
    end
  end
  return count, kv, ctx, tight, found
end
local function hold(expiry, weights, id, weight, now, ttl)
  redis.call('ZADD', expiry, now + ttl, id)
  redis.call('HSET', weights, id, weight)
  redis.call('PEXPIRE', expiry, ttl * 2)
  redis.call('PEXPIRE', weights, ttl * 2)
end
"""

# Admit one lease if the backend, with every replica's leases and this one, passes the VBS
# rule of gateway/state/load.py (``admits``, which this mirrors).
# KEYS[1], KEYS[2]: the backend's lease expiry set and weight hash.
# ARGV: 1 lease id, 2 ttl ms, 3 weight ("kv ctx tpot_us"), 4 max in flight,
#   5 KV capacity (-1: unknown), 6 epsilon, 7 margin, 8..11 ITL a b c d in s ('' if no VBS).
# Returns {admitted, count, kv, ctx, tightest tpot_us (-1: none)} after the decision.
ADMIT_LEASE = (
    _LEASE_LIB
    + """
local now, ttl = now_ms(), tonumber(ARGV[2])
drop_lapsed(KEYS[1], KEYS[2], now)
local count, kv, ctx, tight, renewing = totals(KEYS[2], ARGV[1])
local k, c, p = string.match(ARGV[3], '(%S+) (%S+) (%S+)')
k, c, p = tonumber(k), tonumber(c), tonumber(p)
local held_tight = tight
if p >= 0 and (tight < 0 or p < tight) then tight = p end
local ok = renewing or count + 1 <= tonumber(ARGV[4])
local capacity = tonumber(ARGV[5])
if ok and not renewing and capacity >= 0 and kv + k > capacity then ok = false end
if ok and not renewing and ARGV[8] ~= '' and tight >= 0 then
  local n = count + 1
  local mean = (ctx + c) / n
  local itl = tonumber(ARGV[8]) * n * mean + tonumber(ARGV[9]) * n
    + tonumber(ARGV[10]) * mean + tonumber(ARGV[11])
  if itl < 1e-4 then itl = 1e-4 end
  if tonumber(ARGV[6]) * itl > tonumber(ARGV[7]) * tight / 1e6 then ok = false end
end
if not ok then return {0, count, kv, ctx, held_tight} end
hold(KEYS[1], KEYS[2], ARGV[1], ARGV[3], now, ttl)
return {1, count + 1, kv + k, ctx + c, tight}
"""
)

# Renew a replica's leases and total every named backend.
# KEYS[1]: the store's epoch key; then per backend its lease expiry set and weight hash.
# ARGV[1]: ttl ms. ARGV[2]: the epoch the replica last saw. ARGV[3]: a fresh epoch, used if
#   the key is missing (the store lost its state). ARGV[3 + i]: the replica's leases on
#   backend i, JSON [[id, "weight"], ...].
# A lease is renewed if present; all are registered again when the epoch is not the one the
# replica saw. Returns {epoch, then per backend count, kv, ctx, tightest tpot_us}.
SYNC_LEASES = (
    _LEASE_LIB
    + """
local now, ttl = now_ms(), tonumber(ARGV[1])
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[1], epoch)
end
local register = epoch ~= ARGV[2]
local out = {epoch}
for i = 1, (#KEYS - 1) / 2 do
  local expiry, weights = KEYS[2 * i], KEYS[2 * i + 1]
  drop_lapsed(expiry, weights, now)
  for _, lease in ipairs(cjson.decode(ARGV[3 + i])) do
    if register or redis.call('ZSCORE', expiry, lease[1]) then
      hold(expiry, weights, lease[1], lease[2], now, ttl)
    end
  end
  local count, kv, ctx, tight = totals(weights, '')
  table.insert(out, count)
  table.insert(out, kv)
  table.insert(out, ctx)
  table.insert(out, tight)
end
return out
"""
)

# Totals of one backend's live leases. KEYS[1], KEYS[2]: its expiry set and weight hash.
LOAD_TOTALS = (
    _LEASE_LIB
    + """
drop_lapsed(KEYS[1], KEYS[2], now_ms())
local count, kv, ctx, tight = totals(KEYS[2], '')
return {count, kv, ctx, tight}
"""
)


# Release one lease. KEYS[1], KEYS[2]: the backend's lease expiry set and weight hash.
# ARGV[1]: the lease id. Returns 1 if the lease was held, else 0.
RELEASE_LEASE = """
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

# Append predictor samples, keep the newest, refresh the TTL.
# KEYS[1]: the samples list. ARGV[1]: how many to keep. ARGV[2]: TTL s. ARGV[3..]: lines.
# Returns the list's length.
PUSH_SAMPLES = """
for i = 3, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return redis.call('LLEN', KEYS[1])
"""


def _weight(weight: LeaseWeight) -> str:
    tpot_us = round(weight.tpot_s * 1e6) if math.isfinite(weight.tpot_s) else -1
    return f"{weight.kv_tokens} {weight.context} {tpot_us}"


def _totals(values: list[Any]) -> LoadTotals:
    count, kv, ctx, tight = (int(v) for v in values)
    return LoadTotals(count, kv, ctx, tight / 1e6 if tight >= 0 else math.inf)


_DOWN = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    RedisClusterException,  # no node covers the slot yet (a failover under way)
    ClusterDownError,
    TryAgainError,
    MasterDownError,
)
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str) -> str | None:
    """``redis+cluster://host:port`` (or ``rediss+cluster://``) names a Redis Cluster, by
    any of its nodes: the plain URL to reach that node; None for a standalone URL."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    return f"{plain}{sep}{rest}" if plain and sep else None


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


BULK_TIMEOUT_S = 5.0  # calls that move a model's weights or the sample list


class RedisStore:
    """Every call goes through a circuit breaker (``gateway.state.breaker``): ``call_timeout_s``
    bounds each one, and a store that fails or overruns it is left alone until it answers a
    background ping again.

    A ``redis+cluster://`` URL takes a Redis Cluster: the client follows MOVED and ASK and
    fails over with the cluster; every key shares one hash tag (``keys.py``), so each script
    runs on one node; and a config write waits for a replica to acknowledge it, so that a
    master lost right after a write does not lose it.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sluice",
        timeout_s: float = 1.0,
        call_timeout_s: float = 0.25,
    ) -> None:
        cluster = cluster_url(url)
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "decode_responses": True,
        }
        self._cluster: RedisCluster | None = None
        self._redis: redis.Redis | RedisCluster
        if cluster is not None:
            self._cluster = RedisCluster.from_url(cluster, **options)
            self._redis = self._cluster
        else:
            self._redis = redis.Redis.from_url(url, **options)
        self.breaker = Breaker(self._redis.ping, timeout_s=call_timeout_s, down=_DOWN)
        self.keys = Keys(prefix)
        self._put = self._redis.register_script(PUT_CONFIG)
        self._admit = self._redis.register_script(ADMIT_LEASE)
        self._sync = self._redis.register_script(SYNC_LEASES)
        self._load = self._redis.register_script(LOAD_TOTALS)
        self._release = self._redis.register_script(RELEASE_LEASE)
        self._push = self._redis.register_script(PUSH_SAMPLES)
        self._epoch = ""  # the store epoch last seen; "" until the first sync
        self._pubsub: PubSub | None = None

    async def get_config(self) -> Versioned | None:
        found = await self.breaker.call(lambda: self._redis.hgetall(self.keys.config))
        if not found:
            return None
        return Versioned(int(found["version"]), str(found["payload"]))

    async def put_config(self, payload: str, expected_version: int | None) -> int:
        expected = "" if expected_version is None else str(expected_version)
        keys = [self.keys.config, self.keys.config_channel]
        ok, version = await self.breaker.call(
            lambda: self._put(keys=keys, args=[expected, payload])
        )
        if not ok:
            raise StaleVersion(int(version))
        await self._replicated(self.keys.config)
        return int(version)

    async def _replicated(self, key: str) -> None:
        """In a cluster, wait (briefly) until a replica has the write to ``key``."""
        if self._cluster is None:
            return
        cluster = self._cluster
        node = cluster.get_node_from_key(key)
        if node is None:
            return
        acked = await self.breaker.call(
            lambda: cluster.execute_command("WAIT", 1, 500, target_nodes=node),
            timeout_s=BULK_TIMEOUT_S,
        )
        if not acked:
            log.warning("config write to %s not yet on a replica", node.name)

    def _lease_keys(self, backend: str) -> list[str]:
        return [self.keys.lease_expiry(backend), self.keys.lease_weights(backend)]

    async def admit_lease(
        self, backend: str, lease: str, weight: LeaseWeight, rule: AdmissionRule, ttl_s: float
    ) -> Grant:
        itl = rule.itl
        vbs = [repr(x) for x in (itl.a, itl.b, itl.c, itl.d)] if itl else ["", "", "", ""]
        capacity = rule.kv_capacity if rule.kv_capacity is not None else -1
        args: list[str | int] = [lease, _ms(ttl_s), _weight(weight), rule.max_in_flight]
        args += [capacity, repr(rule.epsilon), repr(rule.margin), *vbs]
        keys = self._lease_keys(backend)
        answer = await self.breaker.call(lambda: self._admit(keys=keys, args=args))
        return Grant(bool(answer[0]), _totals(answer[1:]))

    async def release_lease(self, backend: str, lease: str) -> None:
        keys = self._lease_keys(backend)
        await self.breaker.call(lambda: self._release(keys=keys, args=[lease]))

    async def sync_leases(
        self, held: Mapping[str, Mapping[str, LeaseWeight]], ttl_s: float
    ) -> dict[str, LoadTotals]:
        backends = list(held)
        keys = [self.keys.epoch]
        for backend in backends:
            keys += self._lease_keys(backend)
        leases = [
            json.dumps([[lease, _weight(w)] for lease, w in held[b].items()]) for b in backends
        ]
        args: list[str | int] = [_ms(ttl_s), self._epoch, uuid.uuid4().hex, *leases]
        try:
            answer = await self.breaker.call(lambda: self._sync(keys=keys, args=args))
        except StoreUnavailable:
            self._epoch = ""  # leases may lapse while away: register them again on return
            raise
        self._epoch = str(answer[0])
        return {b: _totals(answer[1 + 4 * i : 5 + 4 * i]) for i, b in enumerate(backends)}

    async def load_totals(self, backend: str) -> LoadTotals:
        keys = self._lease_keys(backend)
        return _totals(await self.breaker.call(lambda: self._load(keys=keys)))

    async def push_samples(self, lines: Sequence[str], keep: int) -> None:
        if not lines:
            return
        args: list[str | int] = [keep, SAMPLES_TTL_S, *lines]
        await self.breaker.call(
            lambda: self._push(keys=[self.keys.samples], args=args), timeout_s=BULK_TIMEOUT_S
        )

    async def recent_samples(self) -> list[str]:
        found = await self.breaker.call(
            lambda: self._redis.lrange(self.keys.samples, 0, -1), timeout_s=BULK_TIMEOUT_S
        )
        return [str(line) for line in found]

    async def put_model(self, blob: ModelBlob) -> None:
        weights = base64.b64encode(blob.weights).decode("ascii")
        await self.breaker.call(
            lambda: self._redis.hset(
                self.keys.model,
                mapping={"version": blob.version, "manifest": blob.manifest, "weights": weights},
            ),
            timeout_s=BULK_TIMEOUT_S,
        )

    async def model_version(self) -> str | None:
        found = await self.breaker.call(lambda: self._redis.hget(self.keys.model, "version"))
        return None if found is None else str(found)

    async def get_model(self) -> ModelBlob | None:
        found = await self.breaker.call(
            lambda: self._redis.hgetall(self.keys.model), timeout_s=BULK_TIMEOUT_S
        )
        if not found:
            return None
        weights = base64.b64decode(found["weights"])
        return ModelBlob(str(found["version"]), str(found["manifest"]), weights)

    async def wait_for_change(self, timeout_s: float) -> None:
        if self.breaker.open:
            await asyncio.sleep(timeout_s)  # the breaker's probe watches the store meanwhile
            return
        try:
            if self._pubsub is None:
                if self._cluster is not None:
                    await self._cluster.initialize()  # the slot map routes the channel
                self._pubsub = self._redis.pubsub()
                await self._pubsub.subscribe(self.keys.config_channel)
            await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout_s)
        except _DOWN:
            # Redis is away: wait out the interval; the next call subscribes again.
            self._pubsub = None
            await asyncio.sleep(timeout_s)

    async def close(self) -> None:
        await self.breaker.close()
        if self._pubsub is not None:
            with contextlib.suppress(*_DOWN):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()
