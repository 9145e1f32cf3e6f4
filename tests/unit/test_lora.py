"""LoRA adapters in placement: where each may be loaded, and how the guards count a load."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, cast

import pytest

from adapters.base import EngineAdapter
from gateway.config import AdapterConfig, BackendConfig, LatencyPrior
from gateway.fleet import Backend, Fleet, Seat
from gateway.scheduling.policy import SloPolicy
from gateway.scheduling.scheduler import Scheduler
from gateway.scheduling.snapshot import Demand, Placement, Rejection

BASE = "base"


def _backend(name: str, *, slots: int = 2, adapters: tuple[str, ...] = (), **extra: Any) -> Backend:
    config = BackendConfig.model_validate(
        {"name": name, "url": "http://127.0.0.1:9", "max_loras": slots, **extra}
    )
    backend = Backend.create(config, cast(EngineAdapter, None), LatencyPrior())  # never called
    backend.healthy = True
    backend.discovered = frozenset({BASE})
    backend.model_cards = ({"id": BASE, "parent": None},)
    for adapter in adapters:
        backend.add_card({"id": adapter, "parent": BASE})
    return backend


def _fleet(*backends: Backend, load_ms: float = 500.0, **pools: str) -> Fleet:
    fleet = Fleet(list(backends), unhealthy_after=2, probe_timeout_s=1.0, clock=lambda: 0.0)
    fleet.adapters.config = {
        name: AdapterConfig(base=BASE, path=f"/a/{name}", load_ms=load_ms, pool=pools.get(name))
        for name in ("a", "b", "c", "d")
    }
    return fleet


def test_an_adapter_is_loadable_where_a_slot_is_free_and_once_at_a_time() -> None:
    one, two = _backend("one"), _backend("two")
    fleet = _fleet(one, two)
    book = fleet.adapters
    assert book.loadable(one, ["a", "x"], one.models, 0.0) == {"a": 0.5}  # x: not configured
    book.seated(one, "a", 0.0)  # placed on one to load it there
    assert book.loadable(one, ["a"], one.models, 0.2) == {"a": pytest.approx(0.3)}
    assert book.loadable(two, ["a"], two.models, 0.2) == {}  # never two loads of it at once
    book.loaded(one, "a", 0.4)
    assert "a" in one.models
    assert book.loadable(one, ["a"], one.models, 0.5) == {}  # resident: no load needed
    assert book.loadable(two, ["a"], two.models, 0.5) == {"a": 0.4}  # measured time now


def test_full_slots_are_freed_only_from_idle_adapters() -> None:
    one = _backend("one", slots=2, adapters=("a", "b"))
    fleet = _fleet(one)
    book = fleet.adapters
    first = fleet.seat("one", 1, Demand("a", 1.0, 9.0), 0, 1.0)
    second = fleet.seat("one", 2, Demand("b", 2.0, 9.0), 0, 2.0)
    assert book.victim(one) is None  # both in use
    assert book.loadable(one, ["c"], one.models, 3.0) == {}
    fleet.unseat(second)
    assert book.evicts(one) == "b"
    fleet.seat("one", 3, Demand("c", 3.0, 9.0), 0, 3.0)  # placed to load c in b's slot
    assert "b" not in one.models  # b takes no new requests there from now
    assert book.slots(one).evicting == {"c": "b"}
    assert book.loadable(one, ["d"], one.models, 3.5) == {}  # c holds b's slot, a is busy
    fleet.unseat(first)
    assert book.evicts(one) == "a"
    assert book.loadable(one, ["d"], one.models, 3.5) == {"d": 0.5}


def test_an_idle_victim_is_the_least_recently_used() -> None:
    one = _backend("one", slots=2, adapters=("a", "b"))
    fleet = _fleet(one)
    first = fleet.seat("one", 1, Demand("b", 1.0, 9.0), 0, 1.0)
    second = fleet.seat("one", 2, Demand("a", 2.0, 9.0), 0, 2.0)
    fleet.unseat(first)
    fleet.unseat(second)
    assert fleet.adapters.victim(one) == "b"
    assert fleet.adapters.loadable(one, ["c"], one.models, 3.0) == {"c": 0.5}


def test_no_slots_means_no_loads() -> None:
    one = _backend("one", slots=0)
    assert _fleet(one).adapters.loadable(one, ["a"], one.models, 0.0) == {}


def test_a_pinned_adapter_loads_only_in_its_pool_and_is_never_evicted_there() -> None:
    inside = _backend("inside", pool="p", slots=1, adapters=("a",))
    outside = _backend("outside", pool="q")
    fleet = _fleet(inside, outside, a="p", b="p")
    book = fleet.adapters
    assert book.loadable(outside, ["b"], outside.models, 0.0) == {}
    assert book.victim(inside) is None  # a is pinned to inside's pool
    assert book.loadable(inside, ["b"], inside.models, 0.0) == {}


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()  # only to create futures
    yield loop
    loop.close()


def _queue(fleet: Fleet) -> Scheduler[Seat]:
    return Scheduler(fleet, SloPolicy(credits=False), clock=lambda: 0.0)


def _ask(model: str, ttft_s: float = 5.0) -> Demand:
    return Demand(model, 0.0, ttft_s, tpot_s=0.1, prompt_tokens=50, predicted_tokens=10)


def test_a_backend_holding_the_adapter_is_preferred(loop: asyncio.AbstractEventLoop) -> None:
    queue = _queue(_fleet(_backend("cold"), _backend("warm", adapters=("a",))))
    for _ in range(3):
        placed = queue.submit(_ask("a"), loop)[1].result()
        assert isinstance(placed, Placement)
        assert placed.backend == "warm"


def test_one_pass_loads_an_adapter_on_one_backend(loop: asyncio.AbstractEventLoop) -> None:
    fleet = _fleet(_backend("one"), _backend("two"), _backend("three"))
    queue = _queue(fleet)
    results = [queue.submit(_ask("a"), loop)[1].result() for _ in range(4)]
    placed = [r for r in results if isinstance(r, Placement)]
    assert len(placed) == 4
    assert len({p.backend for p in placed}) == 1


def test_the_ttft_guard_counts_the_load(loop: asyncio.AbstractEventLoop) -> None:
    queue = _queue(_fleet(_backend("one"), load_ms=3000.0))
    refused = queue.submit(_ask("a", ttft_s=1.0), loop)[1].result()
    assert isinstance(refused, Rejection)
    assert refused.reason == "ttft_unattainable"
    assert refused.predicted_s >= 3.0
    placed = queue.submit(_ask("a", ttft_s=5.0), loop)[1].result()
    assert isinstance(placed, Placement)  # a looser budget has room for the load


def test_a_full_warm_backend_yields_to_a_load_elsewhere(loop: asyncio.AbstractEventLoop) -> None:
    fleet = _fleet(_backend("cold"), _backend("warm", adapters=("a",), max_in_flight=1))
    queue = _queue(fleet)
    first = queue.submit(_ask("a"), loop)[1].result()
    second = queue.submit(_ask("a"), loop)[1].result()
    assert isinstance(first, Placement)
    assert isinstance(second, Placement)
    assert (first.backend, second.backend) == ("warm", "cold")


def test_an_adapter_of_a_model_none_serves_is_not_served(loop: asyncio.AbstractEventLoop) -> None:
    one = _backend("one")
    one.discovered = frozenset({"other"})
    one.model_cards = ({"id": "other", "parent": None},)
    refused = _queue(_fleet(one)).submit(_ask("a"), loop)[1].result()
    assert isinstance(refused, Rejection)
    assert refused.reason == "no_backend"


def test_a_load_given_back_unused_is_off() -> None:
    one, two = _backend("one"), _backend("two")
    fleet = _fleet(one, two)
    seat = fleet.seat("one", 1, Demand("a", 0.0, 9.0), 0, 0.0)  # placed to load a there
    assert fleet.adapters.loadable(two, ["a"], two.models, 0.1) == {}  # one load at a time
    fleet.unseat(seat)  # the lease went back before any load started
    assert fleet.adapters.slots(one).loading == {}
    assert fleet.adapters.loadable(two, ["a"], two.models, 0.2) == {"a": 0.5}
