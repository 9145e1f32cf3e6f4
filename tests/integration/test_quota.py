"""Tenants' rate-limit buckets: the in-process book and the Redis script, one contract, the
Redis one against a real redis-server (on its own clock, so times are compared loosely)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest

from gateway.quota import QuotaAsk, QuotaBook, QuotaState, Settlement
from gateway.state.redis_store import RedisStore
from gateway.state.store import QuotaStore

REAL_TIME = 0.15  # seconds that may pass between a call and the assertion on its times


class BookStore:
    """The in-process book behind the store's protocol, as the limiter uses it locally."""

    def __init__(self) -> None:
        self.book = QuotaBook()

    async def take_quota(self, tenant: str, ask: QuotaAsk, lease: str, ttl_s: float) -> QuotaState:
        return self.book.take(tenant, ask, lease, ttl_s)

    async def settle_quota(
        self,
        replica: str,
        settlements: Sequence[Settlement],
        lease_ttl_s: float,
        replica_ttl_s: float,
    ) -> int:
        for entry in settlements:
            for lease in entry.ended:
                self.book.settle(entry.tenant, None, 0, lease)
            self.book.settle(entry.tenant, entry.tpm, entry.refund)
            for lease in entry.renewed:
                self.book.renew(entry.tenant, lease, lease_ttl_s)
        return 1

    async def quota_usage(self, tenant: str, ask: QuotaAsk) -> QuotaState:
        return self.book.usage(tenant, ask)


@pytest.fixture(params=["book", "redis"])
async def quotas(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[QuotaStore]:
    if request.param == "book":
        yield BookStore()
        return
    store = RedisStore(redis_url, prefix=f"test-{uuid.uuid4().hex}", call_timeout_s=2.0)
    yield store
    await store.close()


def ask(
    *,
    rps: float | None = None,
    tpm: int | None = None,
    concurrent: int | None = None,
    prompt: int = 10,
    tokens: int = 10,
    hold_s: float | None = None,
) -> QuotaAsk:
    return QuotaAsk(rps, tpm, concurrent, prompt, tokens, hold_s)


async def settle(quotas: QuotaStore, *entries: Settlement) -> None:
    await quotas.settle_quota("replica", entries, 30.0, 90.0)


async def test_requests_bucket_holds_a_seconds_worth(quotas: QuotaStore) -> None:
    claim = ask(rps=2.0)
    first = await quotas.take_quota("t", claim, "l1", 30)
    second = await quotas.take_quota("t", claim, "l2", 30)
    assert (first.admitted, first.requests_remaining) == (True, 1)
    assert (second.admitted, second.requests_remaining) == (True, 0)
    assert second.requests_reset_s == pytest.approx(1.0, abs=REAL_TIME)
    third = await quotas.take_quota("t", claim, "l3", 30)
    assert (third.admitted, third.reason) == (False, "requests")
    # One request comes back every half second: the refusal says when.
    assert third.retry_after_s == pytest.approx(0.5, abs=REAL_TIME)
    assert third.tokens_remaining is None  # no token limit set
    # Another tenant has buckets of its own.
    assert (await quotas.take_quota("other", claim, "l4", 30)).admitted


async def test_tokens_are_reserved_then_settled_with_the_true_count(quotas: QuotaStore) -> None:
    # 600 a minute: 10 a second come back.
    taken = await quotas.take_quota("t", ask(tpm=600, tokens=400), "l1", 30)
    assert (taken.admitted, taken.tokens_remaining) == (True, 200)
    assert taken.tokens_reset_s == pytest.approx(40.0, abs=2 * REAL_TIME)
    refused = await quotas.take_quota("t", ask(tpm=600, tokens=300), "l2", 30)
    assert (refused.admitted, refused.reason) == (False, "tokens")
    assert refused.retry_after_s == pytest.approx(10.0, abs=2 * REAL_TIME)
    # A refusal takes nothing.
    usage = await quotas.quota_usage("t", ask(tpm=600))
    assert usage.tokens_remaining is not None
    assert 200 <= usage.tokens_remaining <= 203
    # The request used 100 of its 400: 300 come back.
    await settle(quotas, Settlement("t", 600, 300))
    usage = await quotas.quota_usage("t", ask(tpm=600))
    assert usage.tokens_remaining is not None
    assert 500 <= usage.tokens_remaining <= 503
    # One that used more than it reserved leaves the bucket owing.
    assert (await quotas.take_quota("t", ask(tpm=600, tokens=500), "l3", 30)).admitted
    await settle(quotas, Settlement("t", 600, -400))
    usage = await quotas.quota_usage("t", ask(tpm=600))
    assert usage.tokens_remaining is not None
    assert -400 <= usage.tokens_remaining <= -395


async def test_a_claim_beyond_the_bucket_waits_for_a_full_one(quotas: QuotaStore) -> None:
    # Prompt and predicted reply 900 against 600 a minute: it takes the whole bucket.
    big = ask(tpm=600, prompt=300, tokens=900)
    assert big.reserve() == 600
    first = await quotas.take_quota("t", big, "l1", 30)
    assert (first.admitted, first.tokens_remaining) == (True, 0)
    # A prompt larger than the bucket can never be admitted: no Retry-After would be true.
    huge = await quotas.take_quota("u", ask(tpm=600, prompt=700, tokens=700), "l2", 30)
    assert (huge.admitted, huge.reason, huge.retry_after_s) == (False, "too_large", 0.0)


async def test_concurrent_slots_are_taken_and_given_back(quotas: QuotaStore) -> None:
    claim = ask(concurrent=2)
    assert (await quotas.take_quota("t", claim, "l1", 30)).admitted
    second = await quotas.take_quota("t", claim, "l2", 30)
    assert (second.admitted, second.concurrent) == (True, 2)
    third = await quotas.take_quota("t", claim, "l3", 30)
    assert (third.admitted, third.reason, third.concurrent) == (False, "concurrent", 2)
    await settle(quotas, Settlement("t", None, 0, ended=("l1",)))
    assert (await quotas.take_quota("t", claim, "l3", 30)).admitted


async def test_a_concurrency_refusal_says_when_the_soonest_slot_frees(
    quotas: QuotaStore,
) -> None:
    assert (await quotas.take_quota("t", ask(concurrent=2, hold_s=8.0), "l1", 30)).admitted
    assert (await quotas.take_quota("t", ask(concurrent=2, hold_s=3.0), "l2", 30)).admitted
    refused = await quotas.take_quota("t", ask(concurrent=2, hold_s=5.0), "l3", 30)
    assert (refused.admitted, refused.reason) == (False, "concurrent")
    assert refused.retry_after_s == pytest.approx(3.0, abs=REAL_TIME)
    # The 3 s request ended: the next to free is the 8 s one.
    await settle(quotas, Settlement("t", None, 0, ended=("l2",)))
    assert (await quotas.take_quota("t", ask(concurrent=2, hold_s=0.1), "l4", 30)).admitted
    await asyncio.sleep(0.3)
    # l4 overran its prediction: it may end at any moment, so try again soon.
    overran = await quotas.take_quota("t", ask(concurrent=2), "l5", 30)
    assert overran.retry_after_s == pytest.approx(0.05)
    await settle(quotas, Settlement("t", None, 0, ended=("l4",)))
    assert (await quotas.take_quota("t", ask(concurrent=2), "l5", 30)).admitted
    later = await quotas.take_quota("t", ask(concurrent=2), "l6", 30)
    assert later.retry_after_s == pytest.approx(8.0 - 0.3, abs=REAL_TIME)
    # A lease that lapsed (its replica died) no longer says anything.
    assert (await quotas.take_quota("u", ask(concurrent=1, hold_s=5.0), "d1", 0.2)).admitted
    await asyncio.sleep(0.3)
    assert (await quotas.take_quota("u", ask(concurrent=1), "d2", 30)).admitted
    hinted = await quotas.take_quota("u", ask(concurrent=1), "d3", 30)
    assert hinted.retry_after_s == pytest.approx(1.0)  # d2 said nothing of its length


async def test_a_lease_not_renewed_lapses(quotas: QuotaStore) -> None:
    claim = ask(concurrent=1)
    assert (await quotas.take_quota("t", claim, "kept", 0.3)).admitted
    await asyncio.sleep(0.2)
    await quotas.settle_quota("replica", [Settlement("t", None, renewed=("kept",))], 0.3, 1.0)
    await asyncio.sleep(0.2)
    assert not (await quotas.take_quota("t", claim, "x", 0.3)).admitted  # renewed: still held
    await asyncio.sleep(0.4)
    assert (await quotas.take_quota("t", claim, "y", 0.3)).admitted  # lapsed


async def test_every_limit_is_checked_and_the_worst_named(quotas: QuotaStore) -> None:
    claim = ask(rps=1.0, tpm=600, concurrent=1, tokens=100)
    assert (await quotas.take_quota("t", claim, "l1", 30)).admitted
    refused = await quotas.take_quota("t", claim, "l2", 30)
    # All of requests (1 s), concurrency and nothing of tokens: concurrency is named first,
    # and the wait is the longest of them.
    assert (refused.admitted, refused.reason) == (False, "concurrent")
    assert refused.retry_after_s == pytest.approx(1.0, abs=REAL_TIME)
    assert (refused.requests_remaining, refused.tokens_remaining) == (0, 500)


async def test_settling_registers_replicas(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix=f"test-{uuid.uuid4().hex}", call_timeout_s=2.0)
    try:
        assert await store.settle_quota("r1", [], 30.0, 90.0) == 1
        assert await store.settle_quota("r2", [], 30.0, 90.0) == 2
        assert await store.settle_quota("r1", [], 30.0, 90.0) == 2
        await asyncio.sleep(0.05)
        assert await store.settle_quota("r3", [], 30.0, 0.01) == 1  # the others went quiet
    finally:
        await store.close()
