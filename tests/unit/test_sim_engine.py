from __future__ import annotations

import asyncio

import pytest

from bench.sim.engine import FINISHED, Engine, QueueFull
from bench.sim.profiles import Profile, get_profile


def test_step_time_formula() -> None:
    profile = get_profile("llama8b-h100")
    assert profile.step_seconds(0, 1) == pytest.approx((5752.7 + 6.0) / 1e6)
    assert profile.step_seconds(1000, 10) == pytest.approx((5752.7 + 17250 + 60) / 1e6)
    assert profile.scaled(0.5).step_seconds(1000, 10) == pytest.approx(
        profile.step_seconds(1000, 10) / 2
    )


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("nope")


async def _drain(request_tokens: asyncio.Queue[int]) -> int:
    count = 0
    while await request_tokens.get() != FINISHED:
        count += 1
    return count


async def test_exact_output_length_and_counters() -> None:
    engine = Engine(Profile("t", 100, 1, 1, noise_cv=0))
    engine.start()
    try:
        requests = [engine.submit(10, n) for n in (1, 5, 9)]
        counts = await asyncio.gather(*(_drain(r.tokens) for r in requests))
    finally:
        await engine.stop()
    assert counts == [1, 5, 9]
    assert engine.counters.generation_tokens == 15
    assert engine.counters.prompt_tokens == 30
    assert engine.counters.finished == 3


def test_plan_step_mixes_chunked_prefill_with_decodes() -> None:
    engine = Engine(Profile("t", 0, 1, 1, max_num_batched_tokens=100, noise_cv=0))
    decoding = engine.submit(10, 50)
    long = engine.submit(500, 5)
    engine._admit()
    decoding.prefilled = 10
    decodes, prefills = engine._plan_step()
    assert decodes == [decoding]
    assert prefills == [(long, 99)]  # budget 100 minus one decode token


def test_max_num_seqs_and_queue_bound() -> None:
    engine = Engine(Profile("t", 0, 1, 1, max_num_seqs=2), max_queued=3)
    for _ in range(3):
        engine.submit(10, 10)
    with pytest.raises(QueueFull):
        engine.submit(10, 10)
    engine._admit()
    assert len(engine.running) == 2
    assert len(engine.waiting) == 1


def test_priority_order() -> None:
    engine = Engine(Profile("t", 0, 1, 1, max_num_seqs=1), priority_scheduling=True)
    engine.submit(10, 10, priority=0)
    urgent = engine.submit(10, 10, priority=-10)
    engine._admit()
    assert engine.running == [urgent]


def test_abort_frees_the_slot() -> None:
    engine = Engine(Profile("t", 0, 1, 1))
    request = engine.submit(10, 10)
    engine._admit()
    engine.abort(request)
    engine.abort(request)
    assert engine.running == []
    assert engine.counters.aborted == 1
