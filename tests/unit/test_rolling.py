"""Rolling activation: EcoServe's Algorithm 1 at its boundaries, the sticky-cyclic choice and
the choice of instance, over hand-built snapshots."""

from __future__ import annotations

import math

import pytest

from gateway.scheduling.guards import BackendLoad
from gateway.scheduling.latency import ItlParams, PrefillParams
from gateway.scheduling.policy import SloPolicy
from gateway.scheduling.rolling import Check, check, cycles, pick
from gateway.scheduling.snapshot import (
    Activation,
    BackendView,
    Demand,
    InFlightView,
    Placement,
    RollingView,
    WaitingView,
)

# Prefill 100 ms per request up to 1000 tokens; ITL 10 ms + 1 ms per running request.
PREFILL = PrefillParams(phi=0.1, theta=1000, alpha=0.0001, beta=0.0)
ITL = ItlParams(a=0.0, b=0.001, c=0.0, d=0.010)
NOW = 0.0  # so that the boundaries below are exact in binary floating point


def decoding(tokens: int, tpot: float, since: float) -> InFlightView:
    """A request that has streamed ``tokens`` since its first token ``since`` seconds ago."""
    return InFlightView(tpot, 100, tokens, 500, 300, True, NOW - since)


def view(
    name: str,
    requests: tuple[InFlightView, ...] = (),
    *,
    instance: str | None = "p/0",
    position: int = 0,
    active_since: float | None = None,
    sent: tuple[int, ...] = (),
    kv: int | None = None,
    cap: int = 64,
) -> BackendView:
    rolling = RollingView(instance, position, active_since, sent) if instance is not None else None
    return BackendView(
        name,
        True,
        frozenset({"m"}),
        len(requests),
        cap,
        1.0,
        requests,
        PREFILL,
        ITL,
        kv,
        0,
        rolling=rolling,
    )


def wait(
    ticket: int = 1, *, budget: float = 1.0, prompt: int = 100, reserve: int = 300
) -> WaitingView:
    demand = Demand("m", NOW, NOW + budget, 0.05, prompt, 100, reserve)
    return WaitingView(ticket, demand, credit=1.0)


@pytest.mark.parametrize(
    ("sent", "budget", "expected"),
    [
        # t_total = 0.1 s per prefill (its own included) against the remaining TTFT budget.
        ((), 0.1, Check.PASS),
        ((), 0.0999, Check.TTFT),
        ((100, 200, 300), 0.4, Check.PASS),
        ((100, 200, 300), 0.3999, Check.TTFT),
        # A long prompt past theta: 2000 tokens * 0.1 ms = 0.2 s.
        ((2000,), 0.3001, Check.PASS),
        ((2000,), 0.2999, Check.TTFT),
    ],
)
def test_check_pending_prefill_against_the_ttft_budget(
    sent: tuple[int, ...], budget: float, expected: Check
) -> None:
    load = BackendLoad.of(view("a"))
    assert check(load, wait(budget=budget), sent, NOW) is expected


@pytest.mark.parametrize(
    ("requests", "sent", "expected"),
    [
        # No stream decoding there: nothing to protect.
        ((), (100, 100, 100), Check.PASS),
        # Saved = 10 tokens * 50 ms - 0.3 s = 0.2 s; t_total = 0.2 s (one sent and its own).
        ((decoding(10, 0.05, 0.3),), (100,), Check.PASS),
        ((decoding(10, 0.05, 0.3001),), (100,), Check.DECODE),
        # The mean counts: 0.4 s and 0.0 s of slack average to 0.2 s.
        ((decoding(10, 0.05, 0.1), decoding(10, 0.05, 0.5)), (100,), Check.PASS),
        ((decoding(10, 0.05, 0.1), decoding(10, 0.05, 0.5001)), (100,), Check.DECODE),
        # A request behind its target has negative slack and drags the mean down.
        ((decoding(10, 0.05, 0.75), decoding(10, 0.05, 0.0)), (), Check.PASS),
        ((decoding(10, 0.05, 0.8), decoding(10, 0.05, 0.0)), (), Check.DECODE),
        # Not yet started, or without a TPOT target: no slack to count.
        ((InFlightView(0.05, 100, 0, 500, 300, False),), (100,), Check.PASS),
        ((decoding(10, math.inf, 5.0),), (100,), Check.PASS),
    ],
)
def test_check_decode_slack(
    requests: tuple[InFlightView, ...], sent: tuple[int, ...], expected: Check
) -> None:
    load = BackendLoad.of(view("a", requests))
    assert check(load, wait(budget=10.0), sent, NOW) is expected


@pytest.mark.parametrize(("reserve", "expected"), [(700, Check.PASS), (701, Check.KV)])
def test_check_kv_fit(reserve: int, expected: Check) -> None:
    load = BackendLoad.of(view("a", (decoding(10, 0.05, 0.0),), kv=1000))  # 300 reserved
    assert check(load, wait(budget=10.0, reserve=reserve), (), NOW) is expected


def test_pick_sticks_to_the_active_backend_while_its_check_passes() -> None:
    loads = [
        BackendLoad.of(view("a", position=0)),
        BackendLoad.of(view("b", position=1, active_since=-10.0, sent=(100,))),
        BackendLoad.of(view("c", position=2)),
    ]
    instances = cycles(loads)
    chosen = pick(instances, {"a", "b", "c"}, wait(budget=0.2), NOW, epsilon=1.0, margin=1.0)
    assert chosen is not None
    assert chosen.view.name == "b"
    assert instances[0].activation() == Activation("b", -10.0, (100, 100))


def test_pick_rolls_to_the_next_backend_when_the_active_one_fails() -> None:
    loads = [
        BackendLoad.of(view("a", position=0)),
        BackendLoad.of(view("b", position=1, active_since=-10.0, sent=(100, 100))),
        BackendLoad.of(view("c", position=2)),
    ]
    instances = cycles(loads)
    # On b: three prefills, 0.3 s > 0.2 s. The next in the cycle, c, starts afresh.
    chosen = pick(instances, {"a", "b", "c"}, wait(budget=0.2), NOW, epsilon=1.0, margin=1.0)
    assert chosen is not None
    assert chosen.view.name == "c"
    assert instances[0].activation() == Activation("c", NOW, (100,))


def test_pick_wraps_around_and_skips_backends_that_do_not_admit() -> None:
    loads = [
        BackendLoad.of(view("a", position=0)),
        BackendLoad.of(view("b", position=1)),
        BackendLoad.of(view("c", position=2, active_since=-10.0, sent=(100, 100))),
    ]
    instances = cycles(loads)
    chosen = pick(instances, {"b", "c"}, wait(budget=0.2), NOW, epsilon=1.0, margin=1.0)
    assert chosen is not None
    assert chosen.view.name == "b"


def test_pick_returns_none_when_no_backend_passes() -> None:
    slow = (decoding(1, 0.05, 1.0),)  # 0.95 s behind its target
    loads = [BackendLoad.of(view(n, slow, position=i)) for i, n in enumerate("ab")]
    instances = cycles(loads)
    assert pick(instances, {"a", "b"}, wait(budget=5.0), NOW, epsilon=1.0, margin=1.0) is None
    assert not instances[0].changed


def test_pick_prefers_the_instance_with_more_headroom() -> None:
    busy = tuple(decoding(100, 0.05, 0.0) for _ in range(30))  # ITL 41 ms of the 50 ms target
    loads = [
        BackendLoad.of(view("a", busy, instance="p/0")),
        BackendLoad.of(view("b", busy, instance="p/0", position=1)),
        BackendLoad.of(view("c", instance="p/1")),
    ]
    chosen = pick(cycles(loads), {"a", "b", "c"}, wait(), NOW, epsilon=1.0, margin=1.0)
    assert chosen is not None
    assert chosen.view.name == "c"


def test_a_backend_outside_any_instance_is_an_instance_of_its_own() -> None:
    instances = cycles([BackendLoad.of(view("solo", instance=None))])
    assert [c.instance for c in instances] == ["solo"]


def test_policy_with_rolling_fills_the_active_backend_and_reports_the_activation() -> None:
    backends = [view(n, position=i) for i, n in enumerate("abc")]
    policy = SloPolicy(rolling=True, credits=False, reject=False)
    # Each prefill is predicted at 0.1 s against 0.25 s budgets: two fit per activation.
    queue = [wait(t, budget=0.25) for t in range(1, 6)]
    plan = policy(queue, backends, NOW)
    assert [p.backend for p in plan.placements] == ["a", "a", "b", "b", "c"]
    assert plan.activations == {"p/0": Activation("c", NOW, (100,))}


def test_policy_with_rolling_holds_the_queue_when_no_instance_passes() -> None:
    slow = (decoding(1, 0.05, 1.0),)
    backends = [view("a", slow)]
    plan = SloPolicy(rolling=True, credits=False, reject=False)([wait(1), wait(2)], backends, NOW)
    assert plan.placements == []
    assert plan.rejections == []


def test_policy_without_rolling_ignores_instances() -> None:
    backends = [view(n, position=i) for i, n in enumerate("ab")]
    plan = SloPolicy(credits=False, reject=False)([wait(1), wait(2)], backends, NOW)
    assert {p.backend for p in plan.placements} == {"a", "b"}
    assert plan.activations == {}
    assert isinstance(plan.placements[0], Placement)
