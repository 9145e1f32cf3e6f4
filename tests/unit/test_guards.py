"""The guards' decisions at their boundaries, table-driven over hand-built snapshots."""

from __future__ import annotations

import math

import pytest

from gateway.scheduling.guards import (
    BackendLoad,
    Verdict,
    admit,
    decode_headroom,
    ldf_key,
    priority_tier,
    slot_frees,
    tightness,
    ttft_rejections,
)
from gateway.scheduling.latency import ItlParams, PrefillParams
from gateway.scheduling.policy import SloPolicy
from gateway.scheduling.snapshot import BackendView, Demand, InFlightView, Placement, WaitingView

# ITL = 10 ms + 1 ms per running request (no context term); prefill 100 ms flat up to 1000
# tokens, then 0.1 ms a token.
ITL = ItlParams(a=0.0, b=0.001, c=0.0, d=0.010)
PREFILL = PrefillParams(phi=0.1, theta=1000, alpha=0.0001, beta=0.0)


def running(
    n: int,
    tpot: float = 0.05,
    *,
    remaining: int = 100,
    started: bool = True,
    prompt: int = 100,
    kv: int = 300,
) -> tuple[InFlightView, ...]:
    return tuple(
        InFlightView(tpot, prompt, 0 if remaining else 100, remaining, kv, started)
        for _ in range(n)
    )


def backend(
    name: str = "a",
    requests: tuple[InFlightView, ...] = (),
    *,
    cap: int = 64,
    kv: int | None = None,
    healthy: bool = True,
    models: tuple[str, ...] = ("m",),
    itl: ItlParams | None = ITL,
    prefill: PrefillParams | None = PREFILL,
) -> BackendView:
    return BackendView(
        name, healthy, frozenset(models), len(requests), cap, 1.0, requests, prefill, itl, kv
    )


def wait(
    ticket: int,
    *,
    deadline: float = 10.0,
    tpot: float = 0.05,
    prompt: int = 100,
    predicted: int = 100,
    reserve: int = 300,
    credit: float = 0.0,
    arrival: float = 0.0,
    model: str = "m",
    rejectable: bool = True,
    rank: int = 0,
    leave_slots: int = 0,
    committed: bool = False,
) -> WaitingView:
    demand = Demand(model, arrival, deadline, tpot, prompt, predicted, reserve, rejectable)
    return WaitingView(
        ticket, demand, frozenset(), credit, rank, leave_slots=leave_slots, committed=committed
    )


def test_ldf_orders_by_deadline_then_arrival() -> None:
    queue = [
        wait(1, deadline=3.0, arrival=0.0),
        wait(2, deadline=2.0, arrival=1.0),
        wait(3, deadline=2.0, arrival=0.5),
    ]
    assert [w.ticket for w in sorted(queue, key=ldf_key)] == [3, 2, 1]


@pytest.mark.parametrize(
    ("tpot", "tightest", "trp"),
    [(0.03, 0.03, 1.0), (0.05, 0.03, 0.6), (0.03, 0.05, 1.0), (math.inf, 0.03, 0.0)],
)
def test_tightness(tpot: float, tightest: float, trp: float) -> None:
    assert tightness(tpot, tightest) == pytest.approx(trp)


@pytest.mark.parametrize(("trp", "tier"), [(1.0, 0), (0.6, 4), (0.0, 9)])
def test_priority_tiers(trp: float, tier: int) -> None:
    assert priority_tier(trp) == tier


@pytest.mark.parametrize(
    ("view", "request_tpot", "verdict"),
    [
        # 5 running, adding one: ITL 16 ms x eps 1.3 = 20.8 ms against 0.99 x 21.1 = 20.9 ms.
        (backend(requests=running(5, 0.0211)), 0.05, Verdict.OK),
        (backend(requests=running(5, 0.0210)), 0.05, Verdict.TPOT),
        # The backend's own target would allow it; only the newcomer's tighter one does not.
        (backend(requests=running(5, 0.05)), 0.0210, Verdict.TPOT_OWN),
        (backend(requests=running(2), cap=2), 0.05, Verdict.FULL),
        (backend(requests=running(2, kv=300), kv=900), 0.05, Verdict.KV),
        (backend(requests=running(2, kv=300), kv=901), 0.05, Verdict.OK),
        (backend(itl=None), 0.001, Verdict.OK),
    ],
)
def test_vbs_admission(view: BackendView, request_tpot: float, verdict: Verdict) -> None:
    load = BackendLoad.of(view)
    w = wait(1, tpot=request_tpot, reserve=301)
    assert admit(load, w, epsilon=1.3, margin=0.99) is verdict


def test_decode_headroom_solves_the_itl_model() -> None:
    # Limit 0.99 x 50 ms / 1.3 = 38.08 ms -> batch <= 28.
    load = BackendLoad.of(backend(requests=running(10)))
    assert decode_headroom(load, 0.05, epsilon=1.3, margin=0.99) == 18
    full = BackendLoad.of(backend(requests=running(10), cap=12))
    assert decode_headroom(full, 0.05, epsilon=1.3, margin=0.99) == 2


def test_slot_frees_count_prefill_and_remaining_tokens() -> None:
    load = BackendLoad.of(
        backend(requests=running(1, remaining=10) + running(1, remaining=20, started=False))
    )
    # ITL at batch 2: 12 ms. The unstarted one prefills first (100 ms).
    assert [at for at, _ in slot_frees([load])] == pytest.approx([0.12, 0.1 + 0.24])
    assert [kv for _, kv in slot_frees([load])] == [300, 300]  # each gives its KV back


def _rejections(
    queue: list[WaitingView], views: list[BackendView], now: float = 0.0, vbs: bool = True
) -> dict[int, float]:
    loads = {v.name: BackendLoad.of(v) for v in views}
    return ttft_rejections(
        sorted(queue, key=ldf_key),
        loads,
        now=now,
        margin_s=0.05,
        epsilon=1.3,
        admit_margin=0.99,
        vbs=vbs,
    )


def test_ttft_budget_boundary() -> None:
    # Free backend: predicted 100 ms prefill + 50 ms margin = 150 ms.
    assert _rejections([wait(1, deadline=0.1501)], [backend()]) == {}
    assert _rejections([wait(1, deadline=0.1499)], [backend()]) == {1: pytest.approx(0.1)}


def test_queued_prefill_work_accumulates_and_rejected_work_does_not() -> None:
    # Each 2000-token prompt costs 0.2 s more of prefill on the one backend.
    queue = [
        wait(1, deadline=0.30, prompt=2000),  # predicted 0.2, + margin 0.25: fits
        wait(2, deadline=0.44, prompt=2000),  # predicted 0.4 + 0.05 > 0.44: rejected
        wait(3, deadline=0.46, prompt=2000),  # 0.4 again, as 2's tokens are not counted
    ]
    assert _rejections(queue, [backend()]) == {2: pytest.approx(0.4)}


def test_waiting_for_a_decode_slot_counts() -> None:
    # The only slot is taken by a request with 100 tokens left at 11 ms each: 1.1 s.
    view = backend(requests=running(1, remaining=100), cap=1)
    assert _rejections([wait(1, deadline=1.2)], [view]) == {1: pytest.approx(1.2)}
    assert _rejections([wait(1, deadline=1.4)], [view]) == {}


def test_a_queue_deeper_than_the_slots_waits_for_the_requests_ahead_of_it() -> None:
    # One slot, freed in 1.1 s. The first queued request takes it (first token at 1.2 s) and
    # holds it for its 100 predicted tokens at 11 ms: the second's slot frees at 2.3 s, so
    # its first token comes at 2.4 s, not at 1.2 s with the first.
    view = backend(requests=running(1, remaining=100), cap=1)
    queue = [wait(1, deadline=1.3), wait(2, deadline=2.0), wait(3, deadline=2.5)]
    assert _rejections(queue, [view]) == {2: pytest.approx(2.4)}
    # 2, refused, holds no slot: 3 gets the slot 1 gives back.


def test_a_request_that_waits_for_a_slot_prefills_after_the_batches_before_it_are_done() -> None:
    # 2000-token prompts take 0.2 s. With one slot, 2 starts when 1 ends (2.4 s) and
    # prefills alone: 1's prefill was done long before. With two slots they start together
    # and their prefills are batched: 0.4 s for both.
    view = backend(requests=running(1, remaining=100), cap=1)
    queue = [wait(1, deadline=1.6, prompt=2000), wait(2, deadline=2.66, prompt=2000)]
    assert _rejections(queue, [view]) == {}
    assert _rejections([queue[0], wait(2, deadline=2.64, prompt=2000)], [view]) == {
        2: pytest.approx(2.6)
    }
    idle = backend(cap=2)
    together = [wait(1, deadline=0.30, prompt=2000), wait(2, deadline=0.44, prompt=2000)]
    assert _rejections(together, [idle]) == {2: pytest.approx(0.4)}


def test_best_effort_is_never_rejected_and_unhealthy_fleets_hold() -> None:
    assert _rejections([wait(1, deadline=0.0, rejectable=False)], [backend()]) == {}
    assert _rejections([wait(1, deadline=0.0)], [backend(healthy=False)]) == {}


POLICY = SloPolicy(margin_s=0.05, epsilon=1.3, admit_margin=0.99, urgent_s=0.1)


def test_credits_make_loose_requests_wait_a_pass_while_slots_are_short() -> None:
    # Two slots, three waiting: the tight ones take them, the loose one gains credit.
    queue = [wait(1, tpot=0.03), wait(2, tpot=0.05), wait(3, tpot=0.03)]
    plan = POLICY(queue, [backend(cap=2)], 0.0)
    assert sorted(p.ticket for p in plan.placements) == [1, 3]
    assert plan.credits[2] == pytest.approx(0.6)
    without = SloPolicy(credits=False)(queue, [backend(cap=2)], 0.0)
    assert sorted(p.ticket for p in without.placements) == [1, 2]
    again = POLICY([wait(2, tpot=0.05, credit=0.6)], [backend()], 0.0)
    assert [p.ticket for p in again.placements] == [2]
    assert again.placements[0].priority == 0  # alone, it is the tightest


def test_credits_hold_nobody_back_while_every_waiting_request_has_a_slot() -> None:
    plan = POLICY([wait(1, tpot=0.03), wait(2, tpot=0.05)], [backend(cap=2)], 0.0)
    assert sorted(p.ticket for p in plan.placements) == [1, 2]
    assert plan.placements[1].priority == 4  # still sent with its tier's priority
    assert plan.credits == {}


def test_an_urgent_request_skips_the_credit_wait() -> None:
    loose = wait(2, tpot=0.05, deadline=0.19)  # 0.19 - 0.1 prefill < 0.1 urgent
    queue = [wait(1, tpot=0.03), loose, wait(3, tpot=0.03, deadline=20.0)]
    plan = POLICY(queue, [backend(cap=2)], 0.0)
    assert sorted(p.ticket for p in plan.placements) == [1, 2]
    calm = wait(2, tpot=0.05, deadline=5.0)
    plan = POLICY(
        [wait(1, tpot=0.03), calm, wait(3, tpot=0.03, deadline=20.0)], [backend(cap=2)], 0.0
    )
    assert sorted(p.ticket for p in plan.placements) == [1, 3]


def test_ldf_stops_at_the_first_request_that_does_not_fit() -> None:
    policy = SloPolicy(credits=False, reject=False)
    queue = [wait(1, deadline=1.0, reserve=800), wait(2, deadline=2.0, reserve=10)]
    plan = policy(queue, [backend("a", running(1, kv=300), kv=1000)], 0.0)
    assert plan.placements == []  # 2 would fit, but must not overtake 1


def test_a_request_no_cache_can_hold_does_not_block_those_behind_it() -> None:
    policy = SloPolicy(credits=False, reject=False)
    huge = wait(1, deadline=1.0, reserve=5000)
    queue = [huge, wait(2, deadline=2.0, reserve=10)]
    # Both backends busy: the huge one waits for an idle backend, the small one goes now.
    busy = [backend("a", running(1), kv=1000), backend("b", running(1), kv=1000)]
    assert [p.ticket for p in policy(queue, busy, 0.0).placements] == [2]
    # An idle backend takes it alone, and its engine decides.
    plan = policy(queue, [backend("a", running(1), kv=1000), backend("b", kv=1000)], 0.0)
    assert [(p.ticket, p.backend) for p in plan.placements] == [(1, "b"), (2, "a")]


def test_own_tight_target_does_not_block_looser_requests() -> None:
    policy = SloPolicy(credits=False, reject=False)
    view = backend(requests=running(5, 0.05))
    queue = [wait(1, deadline=1.0, tpot=0.0210), wait(2, deadline=2.0, tpot=0.05)]
    assert [p.ticket for p in policy(queue, [view], 0.0).placements] == [2]


def test_tpot_no_backend_can_decode_is_refused_or_served_best_effort() -> None:
    too_tight = wait(1, tpot=0.005)
    plan = POLICY([too_tight], [backend()], 0.0)
    assert [(r.ticket, r.reason) for r in plan.rejections] == [(1, "tpot_unattainable")]
    best_effort = wait(1, tpot=0.005, rejectable=False)
    assert [p.ticket for p in POLICY([best_effort], [backend()], 0.0).placements] == [1]


def test_placement_weighs_both_budgets() -> None:
    busy = backend("a", running(2, started=False, prompt=3000))
    idle = backend("b", running(3))
    # 6000 tokens of prefill pending on 'a' use 61% of a 1 s budget; joining the three
    # decodes on 'b' uses 36% of the 50 ms TPOT target.
    plan = SloPolicy(credits=False)([wait(1, deadline=1.0)], [busy, idle], 0.0)
    assert plan.placements == [Placement(1, "b", 0)]
    # With a loose TTFT budget the prefill backlog matters less than the batch on 'b'.
    plan = SloPolicy(credits=False)([wait(1, deadline=10.0)], [busy, idle], 0.0)
    assert plan.placements == [Placement(1, "a", 0)]


def test_a_model_that_cannot_be_placed_does_not_block_another() -> None:
    policy = SloPolicy(credits=False, reject=False)
    queue = [wait(1, deadline=1.0, model="x"), wait(2, deadline=2.0)]
    assert [p.ticket for p in policy(queue, [backend()], 0.0).placements] == [2]


def test_without_vbs_only_the_in_flight_bound_limits() -> None:
    policy = SloPolicy(vbs=False, credits=False, reject=False)
    view = backend(requests=running(5, 0.0210), cap=6)
    plan = policy([wait(1), wait(2)], [view], 0.0)
    assert [p.ticket for p in plan.placements] == [1]


def test_a_tenant_above_its_share_is_refused_first() -> None:
    # Two 2000-token prompts, room to prefill one in time: by deadline alone ticket 1 (of the
    # tenant served more, rank 1) would go first and ticket 2 be refused; by rank, 1 is.
    queue = [wait(1, deadline=0.30, prompt=2000, rank=1), wait(2, deadline=0.32, prompt=2000)]
    assert _rejections(queue, [backend()]) == {1: pytest.approx(0.4)}
    same_rank = [wait(1, deadline=0.30, prompt=2000), wait(2, deadline=0.32, prompt=2000)]
    assert _rejections(same_rank, [backend()]) == {2: pytest.approx(0.4)}


def test_a_tenant_above_its_share_is_held_first() -> None:
    # One slot: the request of the tenant below its share takes it, the other waits.
    queue = [wait(1, deadline=5.0, rank=1), wait(2, deadline=6.0)]
    plan = SloPolicy(credits=False)(queue, [backend(cap=1)], 0.0)
    assert [p.ticket for p in plan.placements] == [2]
    assert plan.rejections == []
    # When both fit, both go: the rank only decides who is held or refused.
    both = SloPolicy(credits=False)(queue, [backend(cap=2)], 0.0)
    assert sorted(p.ticket for p in both.placements) == [1, 2]


def test_slots_left_for_tenants_below_its_share_count_as_taken() -> None:
    # Two slots, one taken by a request with 1.1 s of decoding left. A request that may use
    # the free one goes now; one that must leave it to a lighter tenant waits for 1.1 s.
    view = backend(requests=running(1, remaining=100), cap=2)
    assert _rejections([wait(1, deadline=0.5, rank=1)], [view]) == {}
    kept = _rejections([wait(1, deadline=0.5, rank=1, leave_slots=1)], [view])
    assert kept == {1: pytest.approx(1.2)}


def test_a_tenant_above_its_share_leaves_the_last_slots() -> None:
    policy = SloPolicy(credits=False, reject=False)
    heavy = [
        wait(1, deadline=5.0, rank=1, leave_slots=1),
        wait(2, deadline=6.0, rank=1, leave_slots=1),
    ]
    # Two slots: the heavy tenant takes one and leaves the last; with three it takes two.
    plan = policy(heavy, [backend(cap=2)], 0.0)
    assert [p.ticket for p in plan.placements] == [1]
    plan = policy(heavy, [backend(cap=3)], 0.0)
    assert [p.ticket for p in plan.placements] == [1, 2]
    # Held, not refused; and the lighter tenant's own request takes the kept slot.
    light = wait(3, deadline=7.0)
    plan = policy([*heavy, light], [backend(cap=2)], 0.0)
    assert [p.ticket for p in plan.placements] == [3]  # the last slot stays kept
    assert plan.rejections == []
    # With VBS the slots are those its ITL model allows at a 50 ms target: 28 in flight.
    for running_now, placed in ((25, [1, 2]), (26, [1]), (27, [])):
        crowded = backend(requests=running(running_now, 0.05), cap=64)
        assert [p.ticket for p in policy(heavy, [crowded], 0.0).placements] == placed


def test_the_walk_counts_each_requests_kv_not_the_mean() -> None:
    # A 10,000-token cache holding one request of 8,000 (100 tokens left) and one of 1,000 (50
    # left), at 12 ms a token (two running); a slot is still free by count.
    held = (
        InFlightView(0.05, 100, 0, 100, 8000, True),
        InFlightView(0.05, 100, 0, 50, 1000, True),
    )
    view = backend(requests=held, cap=3, kv=10_000)
    # A small request fits the 1,000 tokens free: it goes now (prefill 0.1 s).
    assert _rejections([wait(1, deadline=0.2, reserve=500)], [view]) == {}
    # One needing 1,500 waits for the 1,000-token request to end (0.6 s), one needing 2,500
    # for the 8,000-token one too (1.2 s): each then prefills for 0.1 s.
    assert _rejections([wait(1, deadline=0.5, reserve=1500)], [view]) == {1: pytest.approx(0.7)}
    assert _rejections([wait(1, deadline=0.5, reserve=2500)], [view]) == {1: pytest.approx(1.3)}
    # Averaged over the two held (4,500 each), none would fit: the mean is not what counts.
    assert _rejections([wait(1, deadline=0.2, reserve=900)], [view]) == {}
