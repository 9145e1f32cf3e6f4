"""The SLO guards as pure functions (ALGORITHMS.md §3 and §4, gateway forms).

Each takes plain values or snapshot views and returns a decision; ``policy.SloPolicy``
strings them together into one scheduling pass.
"""

from __future__ import annotations

import enum
import heapq
import math
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from gateway.scheduling.snapshot import BackendView, WaitingView

DEFAULT_CONTEXT = 1000.0  # mean context assumed for a backend with nothing in flight


def ldf_key(w: WaitingView) -> tuple[int, float, float, int]:
    """Least deadline first within a fair-share rank; ties by arrival, then ticket."""
    return (w.rank, w.deadline, w.arrival, w.ticket)


def fifo_key(w: WaitingView) -> tuple[int, float, float, int]:
    return (w.rank, w.arrival, w.arrival, w.ticket)


def tightness(tpot_s: float, tightest_s: float) -> float:
    """TRP: 1 for the tightest TPOT target in the set, below 1 for looser ones."""
    if not math.isfinite(tpot_s) or tpot_s <= 0:
        return 1.0 if not math.isfinite(tightest_s) else 0.0
    return min(1.0, tightest_s / tpot_s)


def credit_after_pass(credit: float, trp: float) -> float:
    return credit + trp


def priority_tier(trp: float) -> int:
    """vLLM priority (lower runs first) from tightness: 0 for the tightest, up to 9."""
    return max(0, min(9, round(10 * (1.0 - trp))))


class Verdict(enum.Enum):
    OK = "ok"
    FULL = "full"  # the backend's in-flight bound
    KV = "kv"  # not enough free KV cache for prompt plus predicted output
    TPOT = "tpot"  # admitting it would push the backend's ITL past its tightest target
    TPOT_OWN = "tpot_own"  # fails only because of its own, tighter target


@dataclass(slots=True)
class BackendLoad:
    """A backend's load during one pass; placements made in the pass are added to it."""

    view: BackendView
    count: int
    context_sum: float
    min_tpot: float
    kv_reserved: int
    pending_prefill: int
    # per request: prompt tokens to prefill, predicted reply length, tokens so far, started,
    # KV reserved
    remaining: list[tuple[int, int, int, bool, int]] = field(default_factory=list)

    @classmethod
    def of(cls, view: BackendView) -> BackendLoad:
        requests, peers = view.requests, view.peers
        return cls(
            view=view,
            count=view.in_flight + peers.count,
            context_sum=float(sum(r.context for r in requests) + peers.context),
            min_tpot=min(min((r.tpot_s for r in requests), default=math.inf), peers.min_tpot_s),
            kv_reserved=sum(r.reserved_kv for r in requests) + peers.kv_tokens,
            pending_prefill=sum(r.prefill_tokens for r in requests if not r.started),
            remaining=[
                (r.prefill_tokens, r.predicted_tokens, r.tokens, r.started, r.reserved_kv)
                for r in requests
            ],
        )

    def mean_context(self, extra_count: int = 0, extra_context: float = 0.0) -> float:
        count = self.count + extra_count
        if count <= 0:
            return DEFAULT_CONTEXT
        return (self.context_sum + extra_context) / count

    def add(self, w: WaitingView) -> None:
        name = self.view.name
        self.count += 1
        self.context_sum += w.prompt_tokens + w.predicted_tokens / 2
        self.min_tpot = min(self.min_tpot, w.tpot_s)
        self.kv_reserved += w.kv_need_on(name)
        self.pending_prefill += w.prefill_on(name)
        self.remaining.append(
            (w.prefill_on(name), w.predicted_tokens, 0, False, w.kv_need_on(name))
        )
        self.view = replace(self.view, dispatched=self.view.dispatched + 1)


def predicted_prefill(load: BackendLoad, prompt_tokens: int) -> float:
    params = load.view.prefill
    if params is None:
        return 0.0
    return params.predict(load.pending_prefill + prompt_tokens)


def first_token_in(load: BackendLoad, w: WaitingView) -> float:
    """Predicted time to ``w``'s first token there if sent now: its LoRA adapter's load, if
    it must be loaded there, then prefill after what is pending."""
    name = load.view.name
    return load.view.loadable.get(w.model, 0.0) + predicted_prefill(load, w.prefill_on(name))


def admit(load: BackendLoad, w: WaitingView, *, epsilon: float, margin: float) -> Verdict:
    """VBS admission of ``w`` to one backend: the in-flight bound, the KV fit, and
    eps * ITL(N + 1, L') <= margin * min TPOT over (in flight and w)."""
    view = load.view
    if load.count >= view.max_in_flight:
        return Verdict.FULL
    kv_need = w.kv_need_on(view.name)
    if view.kv_capacity is not None and load.kv_reserved + kv_need > view.kv_capacity:
        return Verdict.KV
    if view.itl is None:
        return Verdict.OK
    mean = load.mean_context(1, w.prompt_tokens + w.predicted_tokens / 2)
    itl = epsilon * view.itl.predict(load.count + 1, mean)
    if itl <= margin * min(load.min_tpot, w.tpot_s):
        return Verdict.OK
    if itl <= margin * load.min_tpot:
        return Verdict.TPOT_OWN
    return Verdict.TPOT


def never_fits(load: BackendLoad, w: WaitingView) -> bool:
    """``w``'s KV need exceeds the backend's whole cache: no amount of waiting admits it."""
    capacity = load.view.kv_capacity
    return capacity is not None and w.kv_need_on(load.view.name) > capacity


def placement_cost(
    load: BackendLoad, w: WaitingView, *, now: float, epsilon: float
) -> tuple[float, float, int, str]:
    """How much of its budgets ``w`` would use on this backend, worst first: the share of its
    remaining TTFT budget that prefill takes, and the share of the tightest TPOT target there
    that the batch's ITL takes once it joins. Lower is better; ties go to the backend that
    has been sent the fewest requests."""
    budget = max(w.deadline - now, 1e-3)
    ttft_share = first_token_in(load, w) / budget
    tpot_share = 0.0
    view = load.view
    if view.itl is not None:
        mean = load.mean_context(1, w.prompt_tokens + w.predicted_tokens / 2)
        itl = epsilon * view.itl.predict(load.count + 1, mean)
        tpot_share = itl / min(load.min_tpot, w.tpot_s)
    return (max(ttft_share, tpot_share), ttft_share + tpot_share, view.dispatched, view.name)


def prefix_share(load: BackendLoad, w: WaitingView) -> float:
    """The share of ``w``'s prompt expected in the backend's prefix cache."""
    if w.prompt_tokens <= 0:
        return 0.0
    return w.cached.get(load.view.name, 0) / w.prompt_tokens


def decode_headroom(
    load: BackendLoad, tpot_limit: float, *, epsilon: float, margin: float, kv: bool = True
) -> int:
    """How many more requests the backend could take now before VBS admission refuses (with
    ``kv`` off, leaving out the KV fit, at the in-flight requests' mean size)."""
    view = load.view
    room = view.max_in_flight - load.count
    if view.itl is not None:
        limit = margin * min(load.min_tpot, tpot_limit) / epsilon
        batch = view.itl.max_batch(load.mean_context(), limit)
        if math.isfinite(batch):
            room = min(room, math.floor(batch) - load.count)
    if kv and view.kv_capacity is not None and load.count:
        per_request = load.kv_reserved / load.count
        room = min(room, math.floor((view.kv_capacity - load.kv_reserved) / max(per_request, 1)))
    return max(0, room)


def total_headroom(
    loads: Iterable[BackendLoad],
    tpot_limit: float,
    *,
    vbs: bool,
    epsilon: float,
    margin: float,
    kv: bool = True,
) -> int:
    """How many more requests ``loads`` could take now between them: VBS admission's room
    at ``tpot_limit`` (with ``kv``, the KV fit's too), or with ``vbs`` off the in-flight
    bounds'."""
    if vbs:
        return sum(
            decode_headroom(load, tpot_limit, epsilon=epsilon, margin=margin, kv=kv)
            for load in loads
        )
    return sum(max(0, load.view.max_in_flight - load.count) for load in loads)


def tokens_left(predicted: int, tokens: int, overrun: float | None) -> int:
    """A reply's tokens still to come: to its predicted length; past that none, or with
    ``overrun`` that share again of what it has produced (reply lengths are heavy-tailed:
    the longer one has outlived its prediction, the longer it is likely to go on)."""
    if tokens < predicted:
        return predicted - tokens
    return 0 if overrun is None else int(tokens * overrun)


def token_seconds(load: BackendLoad, stretch: bool) -> float:
    """A token's predicted time on ``load``'s backend at its batch now (stretched by how far
    its predictions have lately fallen short, with ``stretch``)."""
    view = load.view
    if view.itl is None:
        return 0.0
    seconds = view.itl.predict(max(load.count, 1), load.mean_context())
    return seconds * view.itl_error if stretch else seconds


def prefill_seconds(load: BackendLoad, tokens: int, stretch: bool) -> float:
    """Prefill of ``tokens`` on ``load``'s backend, as its model predicts (stretched by how
    far its predictions have lately fallen short, with ``stretch``)."""
    params = load.view.prefill
    if params is None:
        return 0.0
    seconds = params.predict(tokens)
    return seconds * load.view.prefill_error if stretch else seconds


def slot_frees(
    loads: Iterable[BackendLoad], *, overrun: float | None = None, stretch: bool = False
) -> list[tuple[float, int]]:
    """When each in-flight request is predicted to finish, from now, soonest first, and the
    KV it then gives back (``overrun``: see ``tokens_left``; ``stretch``: prefill and tokens
    taking as much longer as the backend's predictions have lately fallen short)."""
    frees: list[tuple[float, int]] = []
    for load in loads:
        itl = token_seconds(load, stretch)
        for prompt, predicted, tokens, started, kv in load.remaining:
            prefill = 0.0 if started else prefill_seconds(load, prompt, stretch)
            left = tokens_left(predicted, tokens, overrun)
            frees.append((prefill + left * itl, kv))
    frees.sort()
    return frees


@dataclass(frozen=True, slots=True)
class Serving:
    """One model's backends as the TTFT walk sees them: their loads, how many more requests
    they could take now between them (by count: VBS and the in-flight bounds), when each
    in-flight request should end and the KV it then gives back (soonest first), and, where
    every one of them knows its KV capacity, the KV free now between them."""

    loads: list[BackendLoad]
    headroom: int
    ends: list[tuple[float, int]]
    kv_room: int | None = None
    stretch: bool = False  # prefill and tokens predicted as much longer as they fell short

    @classmethod
    def of(
        cls, loads: list[BackendLoad], headroom: int, overrun: float | None, stretch: bool = False
    ) -> Serving:
        ends = slot_frees(loads, overrun=overrun, stretch=stretch)
        capacities = [load.view.kv_capacity for load in loads]
        if any(c is None for c in capacities):
            return cls(loads, headroom, ends, stretch=stretch)
        room = sum(
            max(0, (capacity or 0) - load.kv_reserved)
            for capacity, load in zip(capacities, loads, strict=True)
        )
        return cls(loads, headroom, ends, room, stretch)


def per_model(
    ordered: Sequence[WaitingView],
    loads: dict[str, BackendLoad],
    *,
    epsilon: float,
    admit_margin: float,
    vbs: bool,
) -> Iterator[tuple[list[WaitingView], Serving]]:
    """Each model's part of ``ordered`` (in its order; by pool too, for requests placed on a
    variant's pool) and the healthy backends serving it; a model none serves is left out:
    with nothing to predict with, its requests wait (a cold start), neither admitted nor
    refused."""
    for model, pool in {(w.model, w.demand.pool) for w in ordered}:
        queue = [w for w in ordered if w.model == model and w.demand.pool == pool]
        serving = [
            load
            for load in loads.values()
            if load.view.healthy
            and load.view.offers(model)
            and (pool is None or load.view.pool == pool)
        ]
        if not serving:
            continue
        tightest = min(w.tpot_s for w in queue)
        kv = any(load.view.kv_capacity is None for load in serving)  # else the walk counts KV
        headroom = total_headroom(
            serving, tightest, vbs=vbs, epsilon=epsilon, margin=admit_margin, kv=kv
        )
        yield queue, Serving.of(serving, headroom, None)


def within_budget(now: float, margin_s: float) -> Callable[[WaitingView, float], bool]:
    """Whether a request would get its first token, predicted at ``ttft``, with ``margin_s``
    of its budget to spare (a best-effort one always does)."""

    def fits(w: WaitingView, ttft: float) -> bool:
        return not w.rejectable or w.deadline - now >= ttft + margin_s

    return fits


def misfits(
    queue: Iterable[WaitingView],
    predicted: dict[int, float],
    fits: Callable[[WaitingView, float], bool],
) -> dict[int, float]:
    """Ticket -> predicted time to first token, for the walked requests that do not fit."""
    return {
        w.ticket: predicted[w.ticket]
        for w in queue
        if w.ticket in predicted and not fits(w, predicted[w.ticket])
    }


def ttft_walk(
    queue: Iterable[WaitingView],
    serving: Serving,
    pending: dict[str, int],
    keep: Callable[[WaitingView, float], bool],
) -> dict[int, float]:
    """The TTFT guard's walk over ``queue`` in its order (SCORPIO §3, gateway form).

    The requests start in order, as the placement loop sends them (in LDF order, stopping at
    the first that does not fit). Each needs a slot beyond those it must leave to tenants
    below its share and, where the KV is counted, the KV it needs; until it has both, it
    waits for the next request to end, in flight or walked ahead of it (each walked request
    holds its slot and KV from its predicted first token for its predicted reply, at the
    mean of the backends' token times), so a queue deeper than the slots waits for the
    queue ahead of it, not only for what runs now.
    Then it is placed, hypothetically, on the backend that would give its first token
    soonest: its prefill is batched with the prefill work there that is still under way when
    it starts (``pending`` now, then that of the requests walked there that start before
    that batch is predicted done); a batch done before it starts is not in its way. ``keep``
    says, from its predicted time to first token, whether it stays in the schedule; one that
    does not takes no slot, KV or prefill time from those behind it. ``pending`` ends with
    the prefill work placed to start now added (another model's walk over shared backends
    counts it). Returns ticket -> predicted time to first token, for every request with a
    candidate."""
    predicted: dict[int, float] = {}
    ends = list(serving.ends)  # a heap of (when a request ends, the KV it gives back)
    heapq.heapify(ends)
    clock, slots = 0.0, serving.headroom
    kv = math.inf if serving.kv_room is None else float(serving.kv_room)
    names = [load.view.name for load in serving.loads]
    # A token's time, the same wherever the request goes: slots are pooled, and where it
    # will decode is the placement's choice, not the soonest prefill's
    per_token = (
        statistics.fmean(token_seconds(load, serving.stretch) for load in serving.loads)
        if serving.loads
        else 0.0
    )
    # Per backend, the prefill batch under way: when it began, its tokens, when it is done.
    began = dict.fromkeys(names, 0.0)
    batched = {name: pending[name] for name in names}
    done = {
        load.view.name: prefill_seconds(load, pending[load.view.name], serving.stretch)
        for load in serving.loads
    }
    for w in queue:
        candidates = [load for load in serving.loads if load.view.name not in w.excluded]
        if not candidates:
            continue
        need = 0 if serving.kv_room is None else min(w.kv_need_on(c.view.name) for c in candidates)
        before, taken = (clock, slots, kv), []
        while (slots <= w.leave_slots or kv < need) and ends:
            at, freed = heapq.heappop(ends)
            taken.append((at, freed))
            clock, slots, kv = max(clock, at), slots + 1, kv + freed
        best, first, joins, best_tokens = candidates[0], math.inf, False, 0
        for load in candidates:
            name = load.view.name
            tokens = w.prefill_on(name)
            own = clock + prefill_seconds(load, tokens, serving.stretch)
            under_way = clock < done[name]
            if under_way:  # batched with the prefill still under way there
                batch = began[name] + prefill_seconds(load, batched[name] + tokens, serving.stretch)
                own = max(own, batch)
            own += load.view.loadable.get(w.model, 0.0)  # its adapter's load, if any
            if own < first:
                best, first, joins, best_tokens = load, own, under_way, tokens
        predicted[w.ticket] = first
        if not keep(w, first):
            for event in taken:  # it starts nothing: what it waited for is still to come
                heapq.heappush(ends, event)
            clock, slots, kv = before
            continue
        name = best.view.name
        if joins:
            batched[name] += best_tokens
        else:
            began[name], batched[name] = clock, best_tokens
        done[name] = max(done[name], first)
        if clock <= 0.0:
            pending[name] += best_tokens
        slots -= 1
        kv -= need
        heapq.heappush(ends, (first + w.predicted_tokens * per_token, need))
    return predicted


def ttft_rejections(
    ordered: Sequence[WaitingView],
    loads: dict[str, BackendLoad],
    *,
    now: float,
    margin_s: float,
    epsilon: float,
    admit_margin: float,
    vbs: bool,
) -> dict[int, float]:
    """The TTFT guard at the deadline: walking the queue in LDF order, a request is rejected
    when its remaining budget is below its predicted time to first token plus the margin.
    Returns ticket -> predicted time to first token, for the rejected ones."""

    fits = within_budget(now, margin_s)
    rejected: dict[int, float] = {}
    pending = {name: load.pending_prefill for name, load in loads.items()}
    for queue, serving in per_model(
        ordered, loads, epsilon=epsilon, admit_margin=admit_margin, vbs=vbs
    ):
        rejected.update(misfits(queue, ttft_walk(queue, serving, pending, fits), fits))
    return rejected
