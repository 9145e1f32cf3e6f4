"""Both Store implementations, one contract; the Redis one against a real redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from bench.procs import redis_server
from gateway.state.memory import MemoryStore
from gateway.state.redis_store import RedisStore
from gateway.state.store import StaleVersion, Store, StoreUnavailable


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    # A prefix of its own per test: nothing is flushed on a server others may share.
    redis_store = RedisStore(redis_url, prefix=f"test-{uuid.uuid4().hex}")
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


async def test_slots_never_exceed_the_limit(store: Store) -> None:
    granted = await asyncio.gather(
        *(store.acquire_slot("b0", f"lease-{i}", 5, 30.0) for i in range(50))
    )
    assert sum(granted) == 5
    assert await store.slots_in_use("b0") == 5
    winner = next(f"lease-{i}" for i, ok in enumerate(granted) if ok)
    assert await store.acquire_slot("b0", winner, 5, 30.0)  # renewing is not a new slot
    await store.release_slot("b0", winner)
    assert await store.slots_in_use("b0") == 4
    assert await store.acquire_slot("b0", "late", 5, 30.0)
    assert not await store.acquire_slot("b0", "later", 5, 30.0)
    assert await store.slots_in_use("b1") == 0


async def test_expired_slots_are_reclaimed(store: Store) -> None:
    assert await store.acquire_slot("b0", "crashed-replica", 1, 0.05)
    assert not await store.acquire_slot("b0", "other", 1, 0.05)
    await asyncio.sleep(0.1)
    assert await store.acquire_slot("b0", "other", 1, 0.05)


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
        await store.acquire_slot("b0", "x", 1, 1.0)
    await store.close()
