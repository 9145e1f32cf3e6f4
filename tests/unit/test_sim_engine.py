from __future__ import annotations

import asyncio
import contextlib

import pytest

from bench.sim.engine import FINISHED, Engine, QueueFull
from bench.sim.lengths import LengthDistribution
from bench.sim.profiles import PROFILES, Profile, get_profile
from bench.sim.virtual import Arrival, simulate
from bench.stats import gaps


def test_step_time_formula() -> None:
    profile = get_profile("llama8b-h100")
    beta3 = profile.beta3_us
    # 128 KiB of KV per token read at 26% of 3.35 TB/s.
    assert beta3 == pytest.approx(128 * 1024 / (3.35e12 * 0.26) * 1e6)
    assert profile.step_seconds(0, 1) == pytest.approx((5752.7 + 6.0) / 1e6)
    assert profile.step_seconds(1000, 10, 5000) == pytest.approx(
        (5752.7 + 17250 + 60 + beta3 * 5000) / 1e6
    )
    assert profile.scaled(0.5).step_seconds(1000, 10, 5000) == pytest.approx(
        profile.step_seconds(1000, 10, 5000) / 2
    )


@pytest.mark.parametrize("name", sorted(set(PROFILES) - {"instant"}))
def test_profiles_hold_a_full_context(name: str) -> None:
    profile = PROFILES[name]
    assert profile.kv_tokens >= profile.max_model_len


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("nope")


async def _drain(tokens: asyncio.Queue[int] | None) -> int:
    assert tokens is not None
    count = 0
    while await tokens.get() != FINISHED:
        count += 1
    return count


async def test_real_time_exact_output_length_and_counters() -> None:
    engine = Engine(Profile("t", 100, 1, 1, noise_cv=0))
    task = asyncio.create_task(engine.run())
    try:
        requests = [engine.submit(10, n) for n in (1, 5, 9)]
        counts = await asyncio.gather(*(_drain(r.tokens) for r in requests))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert counts == [1, 5, 9]
    assert engine.counters.generation_tokens == 15
    assert engine.counters.prompt_tokens == 30
    assert engine.counters.finished == 3


def test_chunked_prefill_shares_the_budget_with_decodes() -> None:
    engine = Engine(Profile("t", 0, 1, 1, 1, max_num_batched_tokens=100, noise_cv=0))
    decoding = engine.submit(10, 50)
    long = engine.submit(500, 5)
    engine._admit(0.0)
    decoding.computed = 10
    step = engine.plan(0.0)
    assert step is not None
    assert step.decodes == [decoding]
    assert step.prefills == [(long, 99)]  # budget 100 minus one decode token
    assert step.duration == pytest.approx((99 + 1 + 10) / 1e6)


def test_a_long_prefill_slows_the_decodes_in_its_step() -> None:
    profile = get_profile("llama8b-h100")
    quiet = simulate(profile, [Arrival(0.0, 100, 200)])
    busy = simulate(profile, [Arrival(0.0, 100, 200), Arrival(0.3, 8000, 2)])

    # The 8000-token prefill runs in one step of ~144 ms, during which the decode waits.
    assert max(gaps(quiet[0].token_times)) < 0.01
    assert max(gaps(busy[0].token_times)) > 0.1


def test_virtual_time_ttft_and_itl_follow_the_formula() -> None:
    profile = Profile("t", 5000, 10, 5, 0.0, noise_cv=0)
    [request] = simulate(profile, [Arrival(1.0, 256, 4)])
    assert request.first_token_at == pytest.approx(1.0 + (5000 + 2560) / 1e6)
    assert gaps(request.token_times) == pytest.approx([(5000 + 5) / 1e6] * 3)


def test_max_num_seqs_and_queue_bound() -> None:
    engine = Engine(Profile("t", 0, 1, 1, max_num_seqs=2), max_queued=3)
    for _ in range(3):
        engine.submit(10, 10)
    with pytest.raises(QueueFull):
        engine.submit(10, 10)
    engine._admit(0.0)
    assert len(engine.running) == 2
    assert len(engine.waiting) == 1


def test_priority_order() -> None:
    engine = Engine(Profile("t", 0, 1, 1, max_num_seqs=1), priority_scheduling=True)
    engine.submit(10, 10, priority=0)
    urgent = engine.submit(10, 10, priority=-10)
    engine._admit(0.0)
    assert engine.running == [urgent]


def test_kv_exhaustion_preempts_and_recomputes() -> None:
    # 8 blocks of 4 tokens: two requests of 8-token prompts fit, but not their growth.
    profile = Profile("t", 100, 1, 1, noise_cv=0, kv_blocks=8, block_size=4)
    requests = simulate(profile, [Arrival(0.0, 8, 12), Arrival(0.0, 8, 12)])
    assert all(r.generated == 12 for r in requests)
    assert sum(r.preemptions for r in requests) >= 1
    victim = max(requests, key=lambda r: r.preemptions)
    assert victim.finished_at is not None
    other = min(requests, key=lambda r: r.preemptions)
    assert other.finished_at is not None
    assert victim.finished_at > other.finished_at


def test_admission_waits_for_kv() -> None:
    profile = Profile("t", 0, 1, 1, kv_blocks=10, block_size=4)
    engine = Engine(profile)
    engine.submit(30, 5)  # needs 8 blocks
    engine.submit(30, 5)
    engine._admit(0.0)
    assert len(engine.running) == 1


def test_abort_frees_the_slot() -> None:
    engine = Engine(Profile("t", 0, 1, 1))
    request = engine.submit(10, 10)
    engine._admit(0.0)
    engine.abort(request)
    engine.abort(request)
    assert engine.running == []
    assert engine.counters.aborted == 1


@pytest.mark.parametrize("kind", ["lognormal", "exponential"])
def test_length_distributions_have_their_mean(kind: str) -> None:
    import random

    rng = random.Random(0)
    dist = LengthDistribution(kind, mean=200)
    draws = [dist.draw(rng) for _ in range(20_000)]
    assert min(draws) >= 1
    assert sum(draws) / len(draws) == pytest.approx(200, rel=0.05)
