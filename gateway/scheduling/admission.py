"""Admission as a commitment: the TTFT guard decides at arrival, and keeps its word.

At the deadline (``guards.ttft_rejections``) the guard walks the whole queue in LDF order on
every pass and refuses whoever no longer fits, so a request that looked servable at arrival
is refused later, when tighter requests arrive and overtake it. Here a request is committed
to when it arrives if the schedule of every request already committed to, plus it, stays
feasible: walking them in LDF order over the backends' predicted prefill and decode-slot
times, it fits its own budget with the margin, and no committed request it would overtake
loses more than its slack beyond the margin (one with less slack than the margin may not be
made later at all). Otherwise it is refused at once, and its predicted time is set so that
``Retry-After`` says by how much it, or the request it would push out, overran.

The arrival test is cautious where the deadline walk is not: a reply in flight that has
outlived its predicted length is counted as going on for ``overrun`` again of what it has
produced, instead of ending now (reply lengths are heavy-tailed), so that the slots it holds
are not promised to newcomers too early; and with ``stretch``, each backend's prefill and
tokens take as much longer than predicted as its latency models have lately fallen short
(their shortfall quantile, ``latency.ERROR_QUANTILE``), so that a backend slower than its
fit is not promised at the fit's speed.

A committed request is refused later only when the committed schedule alone no longer lets
it meet its deadline (expected lengths, as at the deadline; the margin it was admitted with
may be used up): a backend failed, or a prediction was badly wrong. Those refusals have
their own reason, ``ttft_late``, to be counted apart. A class that is not ``protected`` is
decided at arrival too, but later, tighter requests may overtake it as at the deadline; if
it then cannot be served in time it is refused as ``ttft_unattainable``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.scheduling.guards import (
    BackendLoad,
    Serving,
    ldf_key,
    misfits,
    per_model,
    ttft_walk,
    within_budget,
)
from gateway.scheduling.snapshot import WaitingView


@dataclass(slots=True)
class Decisions:
    """What one pass of admission decided: tickets newly committed to, newcomers refused
    and committed requests refused late (each ticket -> predicted time to first token)."""

    committed: list[int] = field(default_factory=list)
    refused: dict[int, float] = field(default_factory=dict)
    late: dict[int, float] = field(default_factory=dict)


def _all(_w: WaitingView, _ttft: float) -> bool:
    return True


def commitments(
    ordered: Sequence[WaitingView],
    loads: dict[str, BackendLoad],
    *,
    now: float,
    margin_s: float,
    epsilon: float,
    admit_margin: float,
    vbs: bool,
    overrun: float,
    stretch: bool = True,
) -> Decisions:
    """Find the committed requests of ``ordered`` (the queue in LDF order) that can no
    longer be served in time, then decide its newcomers, in arrival order."""
    decisions = Decisions()
    # A committed request keeps its place while it is still predicted in time: the margin it
    # was admitted with is there to absorb predictions that turn out short, not to refuse it.
    in_time = within_budget(now, 0.0)
    pending = {name: load.pending_prefill for name, load in loads.items()}
    for queue, serving in per_model(
        ordered, loads, epsilon=epsilon, admit_margin=admit_margin, vbs=vbs
    ):
        held = [w for w in queue if w.committed or not w.rejectable]
        expected = ttft_walk(held, serving, dict(pending), in_time)
        unservable = misfits(held, expected, in_time)
        for w in held:
            if w.ticket in unservable:
                # A protected request refused now broke a commitment; an unprotected one was
                # overtaken, as its class allows: refused as at the deadline.
                refusals = decisions.late if w.demand.protected else decisions.refused
                refusals[w.ticket] = unservable[w.ticket]
        schedule = [w for w in held if w.ticket not in unservable]
        cautious = Serving.of(serving.loads, serving.headroom, overrun, stretch)
        after = dict(pending)  # the prefill work pending once the schedule's is added
        base = ttft_walk(schedule, cautious, after, _all)
        keys = [ldf_key(w) for w in schedule]
        newcomers = sorted(
            (w for w in queue if not w.committed and w.rejectable), key=lambda w: w.arrival
        )
        for new in newcomers:
            key = ldf_key(new)
            at = bisect_left(keys, key)
            trial = [*schedule[:at], new, *schedule[at:]]
            trial_after = dict(pending)
            walked = ttft_walk(trial, cautious, trial_after, _all)
            if new.ticket not in walked:
                continue  # no backend it may use: it waits, uncommitted
            over = walked[new.ticket] + margin_s - (new.deadline - now)
            for behind in trial[at + 1 :]:
                if not behind.rejectable or not behind.demand.protected:
                    continue  # best effort, or a class that may be overtaken
                if behind.ticket not in base:
                    continue
                budget = behind.deadline - now
                kept = min(margin_s, max(0.0, budget - base[behind.ticket]))
                over = max(over, walked[behind.ticket] + kept - budget)
            if over > 0:
                decisions.refused[new.ticket] = new.deadline - now + over
                continue
            schedule, base, after = trial, walked, trial_after
            keys.insert(at, key)
            decisions.committed.append(new.ticket)
        pending = after  # another model's walk counts this one's prefill on shared backends
    return decisions
