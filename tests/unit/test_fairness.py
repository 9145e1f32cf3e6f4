"""Fair share between tenants: decayed weighted service counters and the ranks from them."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from adapters.base import EngineAdapter
from gateway.config import BackendConfig, LatencyPrior
from gateway.fleet import Backend, Fleet, Seat
from gateway.scheduling.fairness import FairShare, ShareRules
from gateway.scheduling.policy import SloPolicy
from gateway.scheduling.scheduler import Scheduler
from gateway.scheduling.snapshot import Demand, Placement, Rejection

RULES = ShareRules(half_life_s=10.0, tolerance=0.1, slack_tokens=100.0, prefill=1.0, decode=2.0)


def test_service_weighs_prefill_and_decode_and_divides_by_weight() -> None:
    share = FairShare(RULES, weight=lambda tenant: 2.0 if tenant == "big" else 1.0)
    share.charge("small", 100, 50, now=0.0)
    share.charge("big", 100, 50, now=0.0)
    assert share.service("small", 0.0) == pytest.approx(200.0)
    assert share.service("big", 0.0) == pytest.approx(100.0)
    assert share.service("unknown", 0.0) == 0.0


def test_service_decays_by_half_life_and_corrections_apply() -> None:
    share = FairShare(RULES)
    share.charge("t", 1000, 0, now=0.0)
    assert share.service("t", 10.0) == pytest.approx(500.0)
    assert share.service("t", 20.0) == pytest.approx(250.0)
    share.charge("t", 0, -100, now=20.0)  # it generated 100 tokens fewer than predicted
    assert share.service("t", 20.0) == pytest.approx(50.0)
    share.charge("t", -1000, 0, now=20.0)  # never below zero, and then forgotten
    assert share.service("t", 20.0) == 0.0
    assert share.tenants() == []


def test_ranks_group_tenants_within_the_tolerance() -> None:
    share = FairShare(RULES)
    for tenant, tokens in (("a", 1000), ("b", 1150), ("c", 1300), ("d", 5000)):
        share.charge(tenant, tokens, 0, now=0.0)
    # b is within 10% + 100 of a; c is not (1300 > 1000*1.1 + 100); d is far above c.
    assert share.ranks(["a", "b", "c", "d", None], 0.0) == {
        None: 0,
        "a": 1,
        "b": 1,
        "c": 2,
        "d": 3,
    }
    assert share.ranks(["c", "d"], 0.0) == {"c": 0, "d": 1}


def test_a_heavier_tenant_ranks_with_one_served_half_as_much() -> None:
    share = FairShare(RULES, weight=lambda tenant: 2.0 if tenant == "heavy" else 1.0)
    share.charge("heavy", 2000, 0, now=0.0)
    share.charge("light", 1000, 0, now=0.0)
    assert share.ranks(["heavy", "light"], 0.0) == {"heavy": 0, "light": 0}


def _queue(now: list[float], rules: ShareRules) -> Scheduler[Seat]:
    """A scheduler over one backend of two slots, on a clock the test moves."""
    config = BackendConfig.model_validate(
        {"name": "b0", "url": "http://127.0.0.1:9", "max_in_flight": 2}
    )
    backend = Backend.create(config, cast(EngineAdapter, None), LatencyPrior())  # never called
    backend.healthy, backend.discovered = True, frozenset({"m"})
    fleet = Fleet([backend], unhealthy_after=2, probe_timeout_s=1.0)
    policy = SloPolicy(vbs=False, credits=False, reject=False)
    queue = Scheduler(fleet, policy, clock=lambda: now[0])
    queue.fair = FairShare(rules)
    return queue


def test_a_recently_active_tenant_below_its_share_keeps_a_slot() -> None:
    now = [0.0]
    queue = _queue(now, ShareRules(reserve_slots=1, active_s=10.0))
    loop = asyncio.new_event_loop()  # only to create futures
    try:
        assert queue.fair is not None
        queue.fair.charge("b", 100_000, 0, now=0.0)  # b has been served far more than a

        def ask(tenant: str) -> asyncio.Future[Placement | Rejection]:
            return queue.submit(Demand("m", now[0], now[0] + 60, tenant=tenant), loop)[1]

        light = ask("a")
        assert isinstance(light.result(), Placement)
        queue.finish(light.result().ticket)  # a has nothing waiting or in flight now
        now[0] = 1.0
        flood = [ask("b") for _ in range(3)]
        # a arrived within 10 s: b takes one of the two slots and leaves the other.
        assert [f.done() for f in flood] == [True, False, False]
        again = ask("a")
        assert isinstance(again.result(), Placement)  # a finds its slot free
        queue.finish(again.result().ticket)
        now[0] = 11.5  # a's last arrival is now more than 10 s old: b may use every slot
        queue.schedule()
        assert [f.done() for f in flood] == [True, True, False]
    finally:
        loop.close()


def test_with_no_reserve_the_flood_takes_every_slot() -> None:
    now = [0.0]
    queue = _queue(now, ShareRules(reserve_slots=0))
    loop = asyncio.new_event_loop()
    try:
        assert queue.fair is not None
        queue.fair.charge("b", 100_000, 0, now=0.0)
        light = queue.submit(Demand("m", 0.0, 60.0, tenant="a"), loop)[1]
        queue.finish(light.result().ticket)
        flood = [queue.submit(Demand("m", 0.0, 60.0, tenant="b"), loop)[1] for _ in range(2)]
        assert all(f.done() for f in flood)
    finally:
        loop.close()
