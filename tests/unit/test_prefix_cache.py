"""The simulator's automatic prefix caching, as vLLM's: chained block hashes, shared blocks,
free blocks kept until space is needed, least recently used evicted first."""

from __future__ import annotations

import pytest

from bench.sim.engine import Engine, SimRequest
from bench.sim.prefix_cache import PrefixCache, block_hashes, reply_text, split_blocks, token_ids
from bench.sim.profiles import Profile


def test_token_ids_are_stable_and_blocks_chain() -> None:
    a = token_ids("the quick brown fox jumps over the lazy dog")
    assert a == token_ids("the quick brown fox jumps over the lazy dog")
    assert a[0] == a[6]  # "the" twice: one id
    assert len(token_ids("one two", 5)) == 5
    assert token_ids("one two three", 2) == token_ids("one two")
    shared = " ".join(f"w{i}" for i in range(8))
    first = block_hashes(token_ids(shared + " x1 x2 x3 x4"), 4)
    second = block_hashes(token_ids(shared + " y1 y2 y3 y4"), 4)
    assert first[:2] == second[:2]  # the shared 8 tokens: two full blocks
    assert first[2] != second[2]
    # A block is named by everything before it: the same words after a different start differ.
    assert (
        block_hashes(token_ids("a b c d e f g h"), 4)[1]
        != block_hashes(token_ids("z b c d e f g h"), 4)[1]
    )
    assert block_hashes(token_ids("a b c"), 4) == ()  # no full block


def test_cache_shares_frees_and_evicts_least_recently_used() -> None:
    cache = PrefixCache()
    cache.release((), (1, 2, 3))  # a finished request's blocks, free and cached
    assert (cache.free, cache.in_use) == (3, 0)
    assert cache.match((1, 2, 9)) == 2
    cache.acquire((1, 2))
    cache.acquire((1,))
    assert (cache.free, cache.in_use) == (1, 2)
    cache.release((1,), ())
    assert cache.in_use == 2  # block 1 still held once
    cache.release((1, 2), ())
    cache.release((), (4,))
    assert cache.free == 4
    cache.evict(2)  # 3 was freed first, then 1, 2, 4
    assert cache.match((3,)) == 0
    assert cache.match((1,)) == 0
    assert cache.match((2,)) == 1


def _run(engine: Engine, request: SimRequest, now: float) -> float:
    """Step the engine in virtual time until ``request`` finishes; returns the time."""
    while request.finished_at is None:
        step = engine.plan(now)
        assert step is not None
        now += step.duration
        engine.complete(step, now)
    return now


def test_a_repeated_prompt_skips_the_prefill_of_its_cached_blocks() -> None:
    profile = Profile("t", 1000, 10, 1, noise_cv=0, kv_blocks=1000, block_size=16)
    engine = Engine(profile)
    hashes = block_hashes(token_ids("x", 1600), 16)
    cold = engine.submit(1600, 1, now=0.0, block_hashes=hashes)
    end = _run(engine, cold, 0.0)
    warm = engine.submit(1600, 1, now=end, block_hashes=hashes)
    _run(engine, warm, end)
    assert cold.cached_tokens == 0
    # All but the last block: vLLM computes at least the prompt's last token.
    assert warm.cached_tokens == 1584
    assert engine.counters.prefix_queries == 3200
    assert engine.counters.prefix_hits == 1584
    assert cold.first_token_at is not None
    assert warm.first_token_at is not None
    cold_ttft = cold.first_token_at - cold.arrival
    warm_ttft = warm.first_token_at - warm.arrival
    assert cold_ttft == pytest.approx((1000 + 10 * 1600) / 1e6)
    assert warm_ttft == pytest.approx((1000 + 10 * 16) / 1e6)


def test_cached_blocks_give_way_to_running_requests() -> None:
    # 20 blocks of 16 tokens: one 160-token prompt leaves 10 cached; a new 240-token prompt
    # needs 16 of its own, so 6 of the cached ones go, oldest first.
    profile = Profile("t", 0, 1, 1, noise_cv=0, kv_blocks=20, block_size=16)
    engine = Engine(profile)
    old = block_hashes(token_ids("old", 160), 16)
    first = engine.submit(160, 1, now=0.0, block_hashes=old)
    end = _run(engine, first, 0.0)
    assert engine.cache is not None
    assert engine.cache.free == 10
    new = engine.submit(240, 1, now=end, block_hashes=block_hashes(token_ids("new", 240), 16))
    _run(engine, new, end)
    assert engine.cache.match(old) == 0  # its first blocks were evicted first
    second = engine.submit(160, 1, now=end, block_hashes=old)
    _run(engine, second, end)
    assert second.cached_tokens == 0


def test_without_prefix_caching_nothing_is_shared() -> None:
    profile = Profile("t", 0, 1, 1, noise_cv=0, kv_blocks=100, block_size=16)
    engine = Engine(profile, prefix_caching=False)
    hashes = block_hashes(token_ids("x", 320), 16)
    end = _run(engine, engine.submit(320, 1, now=0.0, block_hashes=hashes), 0.0)
    again = engine.submit(320, 1, now=end, block_hashes=hashes)
    _run(engine, again, end)
    assert again.cached_tokens == 0
    assert engine.counters.prefix_queries == 0


def test_a_next_turn_hits_the_blocks_of_the_reply_it_quotes() -> None:
    # vLLM caches the blocks a reply fills too: a conversation's next turn, whose prompt is
    # the last prompt and its reply and a new message, finds both cached.
    profile = Profile("t", 0, 1, 1, noise_cv=0, kv_blocks=1000, block_size=16)
    engine = Engine(profile)
    prompt = " ".join(f"p{i}" for i in range(40))  # 2 full blocks and 8 tokens
    hashes, tail = split_blocks(token_ids(prompt), 16)
    first = engine.submit(40, 30, now=0.0, block_hashes=hashes, tail=tail)
    end = _run(engine, first, 0.0)
    # 40 prompt tokens and the KV of 29 of the 30 generated ones (the last is never fed
    # back): 4 full blocks.
    follow_up = f"{prompt} {reply_text(30)} " + " ".join(f"n{i}" for i in range(20))
    ids = token_ids(follow_up)
    assert len(ids) == 90
    hashes, tail = split_blocks(ids, 16)
    second = engine.submit(90, 1, now=end, block_hashes=hashes, tail=tail)
    _run(engine, second, end)
    assert second.cached_tokens == 64
    # A reply that differs from what the engine generated hits only the prompt's blocks.
    other = f"{prompt} " + " ".join(f"r{i}" for i in range(30)) + " tail"
    hashes, tail = split_blocks(token_ids(other), 16)
    third = engine.submit(71, 1, now=end, block_hashes=hashes, tail=tail)
    _run(engine, third, end)
    assert third.cached_tokens == 32


def test_a_request_shares_the_blocks_of_one_still_running() -> None:
    # Blocks are cached as soon as they are computed, not when their request ends.
    profile = Profile("t", 0, 1, 1, noise_cv=0, kv_blocks=1000, block_size=16)
    engine = Engine(profile)
    hashes = block_hashes(token_ids("x", 320), 16)
    long_reply = engine.submit(320, 500, now=0.0, block_hashes=hashes)
    now = 0.0
    while long_reply.generated < 5:  # prefilled, decoding
        step = engine.plan(now)
        assert step is not None
        now += step.duration
        engine.complete(step, now)
    joiner = engine.submit(320, 1, now=now, block_hashes=hashes)
    step = engine.plan(now)
    assert joiner.cached_tokens == 304
    assert engine.cache is not None
    assert engine.cache.in_use == 20  # the prompt's blocks, held by both, counted once
    assert step is not None
    assert long_reply.finished_at is None
