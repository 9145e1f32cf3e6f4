"""Admission as a commitment: who is refused at arrival, who is protected, who is late."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.scheduling.admission import Decisions, commitments
from gateway.scheduling.guards import BackendLoad, ldf_key, ttft_rejections
from gateway.scheduling.latency import ItlModel, ItlParams, PrefillModel, PrefillParams
from gateway.scheduling.policy import SloPolicy
from gateway.scheduling.snapshot import BackendView, Demand, InFlightView, WaitingView
from tests.unit.test_guards import backend, running, wait

# Prefill (tests.unit.test_guards): 100 ms flat up to 1000 tokens, then 0.1 ms a token, so a
# 2000-token prompt takes 0.2 s and two of them 0.4 s. Margin 50 ms.
BIG = 2000


def decide(
    queue: list[WaitingView],
    views: list[BackendView],
    overrun: float = 0.25,
    *,
    stretch: bool = True,
) -> Decisions:
    loads = {v.name: BackendLoad.of(v) for v in views}
    return commitments(
        sorted(queue, key=ldf_key),
        loads,
        now=0.0,
        margin_s=0.05,
        epsilon=1.3,
        admit_margin=0.99,
        vbs=True,
        overrun=overrun,
        stretch=stretch,
    )


def at_deadline(queue: list[WaitingView], views: list[BackendView]) -> dict[int, float]:
    loads = {v.name: BackendLoad.of(v) for v in views}
    return ttft_rejections(
        sorted(queue, key=ldf_key),
        loads,
        now=0.0,
        margin_s=0.05,
        epsilon=1.3,
        admit_margin=0.99,
        vbs=True,
    )


def test_a_newcomer_that_fits_is_committed_and_one_that_does_not_is_refused() -> None:
    fits = decide([wait(1, deadline=0.26, prompt=BIG)], [backend()])
    assert (fits.committed, fits.refused, fits.late) == ([1], {}, {})
    short = decide([wait(1, deadline=0.24, prompt=BIG)], [backend()])
    # 0.2 s predicted + 0.05 margin overruns 0.24 by 0.01: Retry-After counts from there.
    assert short.committed == []
    assert short.refused == {1: pytest.approx(0.25)}


def test_a_tighter_newcomer_may_not_push_a_committed_request_out() -> None:
    older = wait(1, deadline=0.42, prompt=BIG, arrival=0.0, committed=True)
    tight = wait(2, deadline=0.30, prompt=BIG, arrival=0.1)
    # Going first under LDF, the newcomer would leave the older one 0.4 + 0.05 > 0.42.
    decided = decide([older, tight], [backend()])
    assert (decided.committed, list(decided.refused), decided.late) == ([], [2], {})
    assert decided.refused[2] == pytest.approx(0.30 + 0.03)
    # At the deadline the guard does the opposite: the older request is the one refused.
    assert list(at_deadline([older, tight], [backend()])) == [1]


def test_slack_beyond_the_margin_may_be_used() -> None:
    older = wait(1, deadline=0.46, prompt=BIG, arrival=0.0, committed=True)
    tight = wait(2, deadline=0.30, prompt=BIG, arrival=0.1)
    decided = decide([older, tight], [backend()])
    assert (decided.committed, decided.refused, decided.late) == ([2], {}, {})


def test_newcomers_are_decided_in_arrival_order() -> None:
    # Room for one of two 2000-token prompts within 0.3 s: the first to arrive gets it, though
    # the second has the earlier deadline.
    first = wait(1, deadline=0.30, prompt=BIG, arrival=0.0)
    second = wait(2, deadline=0.29, prompt=BIG, arrival=0.01)
    decided = decide([first, second], [backend()])
    assert (decided.committed, list(decided.refused)) == ([1], [2])


def test_a_reply_past_its_prediction_holds_its_slot_longer_at_arrival() -> None:
    # The only slot is held by a reply predicted at 100 tokens that has produced 400. By the
    # expected count it ends now; cautiously it goes on for 100 more at 11 ms: 1.1 s.
    overran = InFlightView(0.05, 100, 400, 100, 500, True)
    view = backend(requests=(overran,), cap=1)
    newcomer = wait(1, deadline=0.5)
    assert at_deadline([newcomer], [view]) == {}
    assert decide([newcomer], [view], overrun=0.0).committed == [1]
    refused = decide([newcomer], [view]).refused
    assert refused == {1: pytest.approx(0.5 + 1.1 + 0.1 + 0.05 - 0.5)}


def test_a_committed_request_is_refused_late_only_when_it_cannot_be_served_in_time() -> None:
    view = backend(requests=running(1, remaining=100), cap=1)  # its slot frees in 1.1 s
    hopeless = wait(1, deadline=1.15, committed=True)  # 1.1 + 0.1 prefill > 1.15
    decided = decide([hopeless, wait(2, deadline=1.3, committed=True)], [view])
    assert decided.late == {1: pytest.approx(1.2)}
    # Predicted in time, though inside the margin it was admitted with: it keeps its place.
    tight = wait(1, deadline=1.22, committed=True)
    assert decide([tight, wait(2, deadline=3.0, committed=True)], [view]).late == {}
    best_effort = wait(3, deadline=0.0, rejectable=False)
    assert decide([best_effort], [view]).late == {}


def test_the_policy_commits_refuses_at_arrival_and_names_late_refusals() -> None:
    policy = SloPolicy(credits=False, commit=True)
    view = backend(requests=running(1, remaining=100), cap=1)
    queue = [
        wait(1, deadline=1.15, committed=True),  # late
        wait(2, deadline=5.0, arrival=0.2),  # fits once the slot frees: committed, waits
        wait(3, deadline=0.5, arrival=0.3),  # cannot be served in time: refused now
    ]
    plan = policy(queue, [view], 0.0)
    assert plan.committed == [2]
    assert sorted((r.ticket, r.reason) for r in plan.rejections) == [
        (1, "ttft_late"),
        (3, "ttft_unattainable"),
    ]
    assert plan.placements == []


def test_a_class_that_is_not_protected_may_be_overtaken_and_is_refused_as_at_the_deadline() -> None:
    older = WaitingView(
        1,
        Demand("m", 0.0, 0.38, 0.05, BIG, 100, 300, protected=False),
        committed=True,
    )
    tight = wait(2, deadline=0.30, prompt=BIG, arrival=0.1)
    # Unlike a protected request (test above), it does not hold the newcomer out ...
    decided = decide([older, tight], [backend()])
    assert (decided.committed, decided.refused, decided.late) == ([2], {}, {})
    # ... and once the newcomer is committed ahead of it, it is refused, not as a broken
    # commitment.
    again = decide([older, wait(2, deadline=0.30, prompt=BIG, committed=True)], [backend()])
    assert again.refused == {1: pytest.approx(0.4)}
    assert again.late == {}
    plan = SloPolicy(credits=False, commit=True)(
        [older, wait(2, deadline=0.30, prompt=BIG, committed=True)], [backend()], 0.0
    )
    assert [(r.ticket, r.reason) for r in plan.rejections] == [(1, "ttft_unattainable")]


def test_the_arrival_test_stretches_a_backend_by_how_far_its_predictions_fall_short() -> None:
    newcomer = wait(1, deadline=0.30, prompt=BIG)  # 0.2 s predicted + 0.05 margin: fits
    assert decide([newcomer], [backend()]).committed == [1]
    slow = replace(backend(), prefill_error=1.5)  # its prefill lately took 1.5x the fit
    stretched = decide([newcomer], [slow])
    assert stretched.committed == []
    assert stretched.refused == {1: pytest.approx(0.35)}  # 0.3 s + 0.05 margin
    plain = decide([newcomer], [slow], stretch=False)
    assert plain.committed == [1]


def test_a_committed_request_is_judged_later_by_the_fit_not_the_stretch() -> None:
    # Stretching makes the arrival test cautious; it does not refuse what it committed to.
    held = wait(1, deadline=0.30, prompt=BIG, committed=True)
    decided = decide([held], [replace(backend(), prefill_error=1.5)])
    assert (decided.late, decided.refused) == ({}, {})


def test_the_latency_models_learn_their_shortfall() -> None:
    model = PrefillModel(PrefillParams(0.1, 1000, 0.0001, 0.0))
    assert model.error == 1.0
    for i in range(200):
        # Four in five take what the fit says, one in five twice as long.
        model.observe(500, 0.2 if i % 5 == 0 else 0.1)
    assert 1.0 < model.error <= 2.0
    itl = ItlModel(ItlParams(0.0, 0.0, 0.0, 0.01))
    for _ in range(200):
        itl.observe(4, 100, 0.008)  # faster than predicted: never below 1
    assert itl.error == 1.0
