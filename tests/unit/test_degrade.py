"""Degrading to a model's variant: the pressure's hysteresis, and the scheduler's routes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, cast

import pytest

from adapters.base import EngineAdapter
from gateway.config import BackendConfig, LatencyPrior
from gateway.fleet import Backend, Fleet, Seat
from gateway.scheduling.degrade import Pressure, PressureRules, first_route, next_route
from gateway.scheduling.policy import SloPolicy
from gateway.scheduling.scheduler import Scheduler
from gateway.scheduling.snapshot import Demand, Placement, Rejection, Route

SLOW = LatencyPrior(itl_d_ms=200.0)  # decodes at 200 ms a token: no 50 ms target is met
RULES = PressureRules(enter_share=0.05, leave_share=0.01, half_life_s=10.0, min_dwell_s=5.0)


def test_pressure_turns_on_above_enter_and_off_only_below_leave() -> None:
    pressure = Pressure(RULES)
    assert not pressure.on("m")
    for _ in range(40):
        pressure.observe("m", False, 0.0)
    assert not pressure.on("m")
    pressure.observe("m", True, 0.0)  # 1 of 41: 2.4%, under 5%
    assert not pressure.on("m")
    for _ in range(2):
        pressure.observe("m", True, 0.0)  # 3 of 43: 7%
    assert pressure.on("m")
    for _ in range(150):
        pressure.observe("m", False, 0.0)  # 3 of 193: 1.6%, inside the band: still on
    pressure.settle(10.0, {})
    assert pressure.on("m")
    assert 0.01 < pressure.share("m", 0.0) < 0.05
    for _ in range(200):
        pressure.observe("m", False, 0.0)  # 3 of 393: under 1%
    pressure.settle(0.0, {})  # not yet on for min_dwell_s (5 s)
    assert pressure.on("m")
    pressure.settle(0.01 + RULES.min_dwell_s, {"m": 1})  # something of m still waits
    assert pressure.on("m")
    pressure.settle(0.01 + RULES.min_dwell_s, {"other": 3})
    assert not pressure.on("m")
    assert not pressure.on("other")  # per model


def test_pressure_decays_with_its_half_life() -> None:
    pressure = Pressure(RULES)
    pressure.observe("m", True, 0.0)
    assert pressure.on("m")
    # Old refusals weigh half after one half-life: fresh successes outweigh them sooner.
    for _ in range(30):
        pressure.observe("m", False, 100.0)
    assert pressure.share("m", 100.0) < 0.01
    pressure.settle(100.0, {})
    assert not pressure.on("m")


def test_routes_walk_the_variants_in_order() -> None:
    d = Demand("m", 0.0, 1.0, degrade="when_unattainable", variants=(Route("a"), Route("b", "pb")))
    degrading = Pressure(RULES)
    degrading.observe("m", True, 0.0)
    assert first_route(d, degrading) is d  # when_unattainable starts on its own model
    a = next_route(d)
    assert a is not None
    assert (a.model, a.pool, a.origin, a.asked) == ("a", None, "m", "m")
    b = next_route(a)
    assert b is not None
    assert (b.model, b.pool, b.origin) == ("b", "pb", "m")
    assert next_route(b) is None
    fast = replace(d, degrade="prefer_fast")
    assert first_route(fast, Pressure(RULES)) is fast  # pressure off: its own model
    first = first_route(fast, degrading)
    assert (first.model, first.origin) == ("a", "m")
    second = next_route(first)
    assert second is not None
    assert second.model == "b"
    back = next_route(second)
    assert back is not None
    assert (back.model, back.origin, back.variants) == ("m", None, ())


def test_prefer_fast_skips_a_variant_under_pressure_of_its_own() -> None:
    d = Demand("m", 0.0, 1.0, degrade="prefer_fast", variants=(Route("a"), Route("b")))
    pressure = Pressure(RULES)
    pressure.observe("m", True, 0.0)
    pressure.observe("a", True, 0.0)  # the first variant's pool refuses too
    first = first_route(d, pressure)
    assert (first.model, [v.model for v in first.variants]) == ("b", ["a", "m"])
    pressure.observe("b", True, 0.0)
    assert first_route(d, pressure) is d  # every variant pressed: its own model first


def _backend(name: str, model: str, prior: LatencyPrior, **extra: Any) -> Backend:
    config = BackendConfig.model_validate(
        {"name": name, "url": "http://127.0.0.1:9", "models": [model], **extra}
    )
    backend = Backend.create(config, cast(EngineAdapter, None), prior)  # never called
    backend.healthy, backend.discovered = True, frozenset({model})
    return backend


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()  # only to create futures
    yield loop
    loop.close()


def _queue(*backends: Backend) -> Scheduler[Seat]:
    fleet = Fleet(list(backends), unhealthy_after=2, probe_timeout_s=1.0)
    queue = Scheduler(fleet, SloPolicy(credits=False), clock=lambda: 0.0)
    queue.pressure = Pressure(RULES)
    return queue


def _ask(degrade: str, variants: tuple[Route, ...] = (Route("m-fast"),)) -> Demand:
    return Demand(
        "m",
        0.0,
        5.0,
        tpot_s=0.05,
        prompt_tokens=100,
        predicted_tokens=20,
        reserve_tokens=200,
        degrade=degrade,
        variants=variants if degrade != "never" else (),
    )


def test_a_request_its_model_cannot_serve_goes_to_the_variant(
    loop: asyncio.AbstractEventLoop,
) -> None:
    queue = _queue(_backend("full", "m", SLOW), _backend("fast", "m-fast", LatencyPrior()))
    placed = queue.submit(_ask("when_unattainable"), loop)[1].result()
    assert isinstance(placed, Placement)
    assert (placed.backend, placed.model) == ("fast", "m-fast")
    assert queue.pressure is not None
    assert queue.pressure.on("m")


def test_a_request_that_may_not_be_degraded_is_refused(loop: asyncio.AbstractEventLoop) -> None:
    queue = _queue(_backend("full", "m", SLOW), _backend("fast", "m-fast", LatencyPrior()))
    refused = queue.submit(_ask("never"), loop)[1].result()
    assert isinstance(refused, Rejection)
    assert refused.reason == "tpot_unattainable"


def test_with_no_variant_able_the_last_refusal_stands(loop: asyncio.AbstractEventLoop) -> None:
    queue = _queue(_backend("full", "m", SLOW), _backend("fast", "m-fast", SLOW))
    refused = queue.submit(_ask("when_unattainable"), loop)[1].result()
    assert isinstance(refused, Rejection)
    assert refused.reason == "tpot_unattainable"


def test_a_servable_request_stays_on_its_model(loop: asyncio.AbstractEventLoop) -> None:
    queue = _queue(
        _backend("full", "m", LatencyPrior()), _backend("fast", "m-fast", LatencyPrior())
    )
    for degrade in ("when_unattainable", "prefer_fast"):
        placed = queue.submit(_ask(degrade), loop)[1].result()
        assert isinstance(placed, Placement), degrade
        assert placed.model == "m", degrade


def test_prefer_fast_goes_to_the_variant_while_degrading_is_on(
    loop: asyncio.AbstractEventLoop,
) -> None:
    queue = _queue(
        _backend("full", "m", LatencyPrior()), _backend("fast", "m-fast", LatencyPrior())
    )
    assert queue.pressure is not None
    queue.pressure.observe("m", True, 0.0)  # the model's own backends refused lately
    fast = queue.submit(_ask("prefer_fast"), loop)[1].result()
    assert isinstance(fast, Placement)
    assert (fast.backend, fast.model) == ("fast", "m-fast")
    # when_unattainable still tries its own model first, and is served there.
    own = queue.submit(_ask("when_unattainable"), loop)[1].result()
    assert isinstance(own, Placement)
    assert own.model == "m"


def test_prefer_fast_comes_back_to_its_model_when_no_variant_can_serve(
    loop: asyncio.AbstractEventLoop,
) -> None:
    queue = _queue(_backend("full", "m", LatencyPrior()), _backend("fast", "m-fast", SLOW))
    assert queue.pressure is not None
    queue.pressure.observe("m", True, 0.0)
    placed = queue.submit(_ask("prefer_fast"), loop)[1].result()
    assert isinstance(placed, Placement)
    assert (placed.backend, placed.model) == ("full", "m")


def test_a_variant_pool_limits_where_it_is_served(loop: asyncio.AbstractEventLoop) -> None:
    queue = _queue(
        _backend("full", "m", SLOW),
        _backend("fast-a", "m-fast", LatencyPrior(), pool="a"),
        _backend("fast-b", "m-fast", LatencyPrior(), pool="b"),
    )
    for _ in range(3):
        placed = queue.submit(_ask("when_unattainable", (Route("m-fast", "b"),)), loop)[1]
        result = placed.result()
        assert isinstance(result, Placement)
        assert result.backend == "fast-b"


def test_without_pressure_tracking_nothing_is_degraded(loop: asyncio.AbstractEventLoop) -> None:
    queue = _queue(_backend("full", "m", SLOW), _backend("fast", "m-fast", LatencyPrior()))
    queue.pressure = None  # no model has variants in the config
    refused = queue.submit(_ask("when_unattainable"), loop)[1].result()
    assert isinstance(refused, Rejection)


def test_hysteresis_holds_degrading_off_until_refusals_pass_the_enter_share(
    loop: asyncio.AbstractEventLoop,
) -> None:
    queue = _queue(_backend("full", "m", SLOW), _backend("fast", "m-fast", LatencyPrior()))
    queue.pressure = Pressure(PressureRules(enter_share=0.4, leave_share=0.1))
    for _ in range(3):
        queue.pressure.observe("m", False, 0.0)
    first = queue.submit(_ask("when_unattainable"), loop)[1].result()
    assert isinstance(first, Rejection)  # 1 of 4 refused on its model: 25%, not degrading
    second = queue.submit(_ask("when_unattainable"), loop)[1].result()
    assert isinstance(second, Rejection)  # 2 of 5: 40%, not above it
    third = queue.submit(_ask("when_unattainable"), loop)[1].result()
    assert isinstance(third, Placement)
    assert third.model == "m-fast"
    # Degraded requests still count as refused on their own model: it stays on.
    fourth = queue.submit(_ask("when_unattainable"), loop)[1].result()
    assert isinstance(fourth, Placement)
    assert fourth.model == "m-fast"
