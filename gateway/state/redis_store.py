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

from gateway.quota import QuotaAsk, QuotaState, Settlement
from gateway.state.breaker import Breaker
from gateway.state.keys import SAMPLES_TTL_S, Keys
from gateway.state.load import AdmissionRule, Grant, LeaseWeight, LoadTotals
from gateway.state.scripts import (
    ADMIT_LEASE,
    LOAD_TOTALS,
    PUSH_SAMPLES,
    PUT_CONFIG,
    PUT_KEY,
    QUOTA_USAGE,
    RELEASE_LEASE,
    SETTLE_QUOTA,
    SYNC_LEASES,
    TAKE_QUOTA,
)
from gateway.state.store import ModelBlob, StaleVersion, StoreUnavailable, Versioned

log = logging.getLogger(__name__)


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


def _limit(value: float | None) -> str:
    return "" if value is None else repr(value)


def _quota(values: Sequence[Any], admitted: bool, reason: str, retry_s: float) -> QuotaState:
    """A quota script's levels (``rl, rr, tl, tr, concurrent``) as a QuotaState."""
    rl, rr, tl, tr, concurrent = values
    return QuotaState(
        admitted,
        reason or None,
        retry_s,
        None if rl == "" else math.floor(float(rl)),
        float(rr),
        None if tl == "" else math.floor(float(tl)),
        float(tr),
        int(concurrent),
    )


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
        self._put_key = self._redis.register_script(PUT_KEY)
        self._take_quota = self._redis.register_script(TAKE_QUOTA)
        self._settle_quota = self._redis.register_script(SETTLE_QUOTA)
        self._quota_usage = self._redis.register_script(QUOTA_USAGE)
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
            log.warning("write to %s not yet on a replica", node.name)

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

    async def get_keys(self) -> dict[str, str]:
        found = await self.breaker.call(lambda: self._redis.hgetall(self.keys.client_keys))
        return {str(k): str(v) for k, v in found.items()}

    async def put_key(self, key_id: str, record: str) -> None:
        keys = [self.keys.client_keys, self.keys.config_channel]
        await self.breaker.call(lambda: self._put_key(keys=keys, args=[key_id, record]))
        await self._replicated(self.keys.client_keys)

    def _quota_keys(self, tenant: str) -> list[str]:
        keys = self.keys
        return [keys.quota(tenant), keys.quota_leases(tenant), keys.quota_ends(tenant)]

    async def take_quota(self, tenant: str, ask: QuotaAsk, lease: str, ttl_s: float) -> QuotaState:
        args: list[str | int] = [_limit(ask.rps), _limit(ask.tpm), _limit(ask.concurrent)]
        args += [ask.prompt_tokens, ask.reserve(), lease, repr(ttl_s)]
        args.append("" if ask.hold_s is None else repr(ask.hold_s))
        keys = self._quota_keys(tenant)
        answer = await self.breaker.call(lambda: self._take_quota(keys=keys, args=args))
        return _quota(answer[3:], bool(int(answer[0])), str(answer[1]), float(answer[2]))

    async def settle_quota(
        self,
        replica: str,
        settlements: Sequence[Settlement],
        lease_ttl_s: float,
        replica_ttl_s: float,
    ) -> int:
        keys = [self.keys.replicas]
        args: list[str | int] = [replica, repr(lease_ttl_s), repr(replica_ttl_s)]
        for entry in settlements:
            keys += self._quota_keys(entry.tenant)
            args += [_limit(entry.tpm), entry.refund, " ".join(entry.ended)]
            args.append(" ".join(entry.renewed))
        return int(await self.breaker.call(lambda: self._settle_quota(keys=keys, args=args)))

    async def quota_usage(self, tenant: str, ask: QuotaAsk) -> QuotaState:
        keys = self._quota_keys(tenant)
        args = [_limit(ask.rps), _limit(ask.tpm)]
        answer = await self.breaker.call(lambda: self._quota_usage(keys=keys, args=args))
        return _quota(answer, True, "", 0.0)

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
