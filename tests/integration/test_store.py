"""Both Store implementations, one contract; the Redis one against a real redis-server."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from bench.procs import redis_server
from gateway.scheduling.latency import ItlParams
from gateway.state.load import AdmissionRule, LeaseWeight, LoadTotals
from gateway.state.memory import MemoryStore
from gateway.state.redis_store import RedisStore
from gateway.state.store import ModelBlob, StaleVersion, Store, StoreUnavailable


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    # A prefix of its own per test: nothing is flushed on a server others may share. A call
    # bound of 2 s: fifty calls at once on a busy machine must not open the circuit breaker
    # in a test of the store's semantics (the breaker has its own test).
    redis_store = RedisStore(redis_url, prefix=f"test-{uuid.uuid4().hex}", call_timeout_s=2.0)
    yield redis_store
    await redis_store.close()


async def test_config_compare_and_set(store: Store) -> None:
    assert await store.get_config() is None
    assert await store.put_config('{"a": 1}', expected_version=0) == 1
    assert await store.put_config('{"a": 2}', expected_version=1) == 2
    with pytest.raises(StaleVersion) as stale:
        await store.put_config('{"a": 3}', expected_version=1)
    assert stale.value.current == 2
    current = await store.get_config()
    assert current is not None
    assert (current.version, current.payload) == (2, '{"a": 2}')
    assert await store.put_config('{"a": 4}', expected_version=None) == 3


async def test_concurrent_writers_one_wins(store: Store) -> None:
    await store.put_config("{}", expected_version=None)
    outcomes = await asyncio.gather(
        *(store.put_config(f'{{"w": {i}}}', expected_version=1) for i in range(10)),
        return_exceptions=True,
    )
    assert sum(isinstance(o, int) for o in outcomes) == 1
    assert sum(isinstance(o, StaleVersion) for o in outcomes) == 9


BOUND = AdmissionRule(max_in_flight=5)
LIGHT = LeaseWeight(kv_tokens=100, context=500, tpot_s=0.05)


async def test_leases_never_exceed_the_in_flight_bound(store: Store) -> None:
    grants = await asyncio.gather(
        *(store.admit_lease("b0", f"lease-{i}", LIGHT, BOUND, 30.0) for i in range(50))
    )
    assert sum(g.admitted for g in grants) == 5
    assert await store.load_totals("b0") == LoadTotals(5, 500, 2500, 0.05)
    winner = next(f"lease-{i}" for i, g in enumerate(grants) if g.admitted)
    renewed = await store.admit_lease("b0", winner, LIGHT, BOUND, 30.0)
    assert renewed.admitted  # renewing is not a new lease
    assert renewed.totals.count == 5
    await store.release_lease("b0", winner)
    assert (await store.load_totals("b0")).count == 4
    assert (await store.admit_lease("b0", "late", LIGHT, BOUND, 30.0)).admitted
    refused = await store.admit_lease("b0", "later", LIGHT, BOUND, 30.0)
    assert not refused.admitted
    assert refused.totals.count == 5  # the totals come back with a refusal too
    assert await store.load_totals("b1") == LoadTotals()


async def test_leases_fit_the_kv_capacity(store: Store) -> None:
    rule = AdmissionRule(max_in_flight=100, kv_capacity=1000)
    heavy = LeaseWeight(kv_tokens=300, context=300, tpot_s=math.inf)
    grants = [await store.admit_lease("b0", f"l{i}", heavy, rule, 30.0) for i in range(5)]
    assert [g.admitted for g in grants] == [True, True, True, False, False]
    small = LeaseWeight(kv_tokens=100, context=100, tpot_s=math.inf)
    assert (await store.admit_lease("b0", "small", small, rule, 30.0)).admitted  # 1000 exactly


# ITL = 1 ms per request in the batch + 5 ms: a 20 ms target holds up to 15 requests.
VBS = AdmissionRule(
    max_in_flight=100, itl=ItlParams(a=0.0, b=0.001, c=0.0, d=0.005), epsilon=1.0, margin=1.0
)


async def test_leases_keep_the_tightest_tpot_target(store: Store) -> None:
    tight = LeaseWeight(kv_tokens=10, context=10, tpot_s=0.020)
    loose = LeaseWeight(kv_tokens=10, context=10, tpot_s=0.050)
    grants = await asyncio.gather(
        *(store.admit_lease("b0", f"t{i}", tight, VBS, 30.0) for i in range(30))
    )
    assert sum(g.admitted for g in grants) == 15
    # A looser request would slow the tight ones past their target: refused.
    assert not (await store.admit_lease("b0", "loose", loose, VBS, 30.0)).admitted
    # On a backend of loose requests, 45 fit; a tight one cannot join 45 others.
    for i in range(46):
        grant = await store.admit_lease("b1", f"l{i}", loose, VBS, 30.0)
        assert grant.admitted == (i < 45)
    assert not (await store.admit_lease("b1", "tight", tight, VBS, 30.0)).admitted
    assert (await store.load_totals("b1")).min_tpot_s == pytest.approx(0.050)


async def test_redis_script_and_python_rule_agree(redis_url: str) -> None:
    """The Lua admission script mirrors ``admits``: the same random sequence of leases gets
    the same answers from both stores."""
    rng = random.Random(7)
    memory = MemoryStore()
    shared = RedisStore(redis_url, prefix=f"test-{uuid.uuid4().hex}")
    decisions = []
    for case in range(40):
        rule = AdmissionRule(
            max_in_flight=rng.randint(1, 40),
            kv_capacity=rng.choice([None, rng.randint(1000, 50_000)]),
            itl=rng.choice(
                [None, ItlParams(rng.uniform(0, 2e-7), rng.uniform(0, 2e-3), 0.0, 0.006)]
            ),
            epsilon=rng.uniform(1.0, 1.5),
            margin=0.99,
        )
        for i in range(30):
            weight = LeaseWeight(
                kv_tokens=rng.randint(50, 3000),
                context=rng.randint(50, 3000),
                tpot_s=rng.choice([math.inf, 0.03, 0.05, rng.uniform(0.01, 0.2)]),
            )
            lease = f"{case}-{i}"
            a = await memory.admit_lease(f"b{case}", lease, weight, rule, 30.0)
            b = await shared.admit_lease(f"b{case}", lease, weight, rule, 30.0)
            assert a.admitted == b.admitted, (case, i, rule, weight)
            assert (a.totals.count, a.totals.kv_tokens, a.totals.context) == (
                b.totals.count,
                b.totals.kv_tokens,
                b.totals.context,
            )
            decisions.append(a.admitted)
    assert 0.1 < sum(decisions) / len(decisions) < 0.9  # both kinds of answer were exercised
    await shared.close()


async def test_lapsed_leases_are_reclaimed(store: Store) -> None:
    one = AdmissionRule(max_in_flight=1)
    assert (await store.admit_lease("b0", "crashed-replica", LIGHT, one, 0.05)).admitted
    assert not (await store.admit_lease("b0", "other", LIGHT, one, 0.05)).admitted
    await asyncio.sleep(0.1)
    assert (await store.admit_lease("b0", "other", LIGHT, one, 0.05)).admitted


async def test_sync_renews_leases_and_totals_every_backend(store: Store) -> None:
    assert (await store.admit_lease("b0", "mine", LIGHT, BOUND, 0.3)).admitted
    assert (await store.admit_lease("b0", "theirs", LIGHT, BOUND, 30.0)).admitted
    for _ in range(4):  # past the lease's own TTL, kept alive by renewal
        await asyncio.sleep(0.1)
        totals = await store.sync_leases({"b0": {"mine": LIGHT}, "b1": {}}, 0.3)
    assert totals == {"b0": LoadTotals(2, 200, 1000, 0.05), "b1": LoadTotals()}
    # A released lease is not brought back by a sync that still carries it.
    await store.release_lease("b0", "mine")
    totals = await store.sync_leases({"b0": {"mine": LIGHT}}, 0.3)
    assert totals["b0"].count == 1


async def test_leases_are_registered_again_after_redis_loses_them(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix=f"test-{uuid.uuid4().hex}")
    assert (await store.admit_lease("b0", "mine", LIGHT, BOUND, 30.0)).admitted
    held = {"b0": {"mine": LIGHT}}
    assert (await store.sync_leases(held, 30.0))["b0"].count == 1
    raw = redis.Redis.from_url(redis_url)
    await raw.delete(*(await raw.keys(store.keys.tag + ":*")))  # as a restart would
    await raw.aclose()
    assert (await store.load_totals("b0")).count == 0
    assert (await store.sync_leases(held, 30.0))["b0"].count == 1
    assert (await store.load_totals("b0")).count == 1
    await store.close()


async def test_config_change_is_announced(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix=f"test-{uuid.uuid4().hex}")
    listener = redis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = listener.pubsub()
    await pubsub.subscribe(store.keys.config_channel)
    await pubsub.get_message(timeout=1.0)  # the subscription confirmation
    await store.put_config("{}", expected_version=None)
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
    assert message is not None
    assert message["data"] == "1"
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    await listener.aclose()
    await store.close()


async def test_unreachable_redis_is_reported_not_hung(tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        store = RedisStore(url, prefix="gone", timeout_s=0.5)
        assert await store.put_config("{}", expected_version=None) == 1
    with pytest.raises(StoreUnavailable):
        await store.get_config()
    with pytest.raises(StoreUnavailable):
        await store.admit_lease("b0", "x", LIGHT, BOUND, 1.0)
    with pytest.raises(StoreUnavailable):
        await store.sync_leases({"b0": {}}, 1.0)
    await store.close()


async def test_samples_keep_the_newest(store: Store) -> None:
    await store.push_samples(["a", "b", "c"], keep=4)
    await store.push_samples(["d", "e"], keep=4)
    await store.push_samples([], keep=4)
    assert await store.recent_samples() == ["b", "c", "d", "e"]


async def test_shared_model_round_trip(store: Store) -> None:
    assert await store.model_version() is None
    assert await store.get_model() is None
    blob = ModelBlob("v7", '{"format": "x"}', bytes(range(256)) * 10)
    await store.put_model(blob)
    assert await store.model_version() == "v7"
    assert await store.get_model() == blob
