"""Placement policies: pure functions from a snapshot to the decisions of one pass."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gateway.scheduling.admission import commitments
from gateway.scheduling.guards import (
    BackendLoad,
    Verdict,
    credit_after_pass,
    fifo_key,
    first_token_in,
    ldf_key,
    never_fits,
    priority_tier,
    tightness,
    total_headroom,
    ttft_rejections,
)
from gateway.scheduling.placement import (
    Context,
    Picker,
    Rolling,
    Scored,
    adapter_load,
    budget_used,
    eligible,
    prefix_hit,
    session_affinity,
    verdicts,
)
from gateway.scheduling.rolling import Cycle, cycles
from gateway.scheduling.snapshot import BackendView, Placement, Plan, Rejection, WaitingView

Policy = Callable[[Sequence[WaitingView], Sequence[BackendView], float], Plan]


def least_loaded(
    waiting: Sequence[WaitingView], backends: Sequence[BackendView], now: float = 0.0
) -> Plan:
    """First come, first served, each to the healthy backend with the lowest in-flight/weight.

    A request with no eligible backend that has room stays queued; requests behind it may still
    go to other backends (a model's requests do not block another model's).
    """
    load = {b.name: b.total_in_flight for b in backends}
    placements: list[Placement] = []
    for request in sorted(waiting, key=fifo_key):
        candidates = [
            b
            for b in backends
            if b.healthy
            and b.offers(request.model)
            and b.name not in request.excluded
            and load[b.name] < b.max_in_flight
        ]
        if not candidates:
            continue
        best = min(candidates, key=lambda b: (load[b.name] / b.weight, b.name))
        load[best.name] += 1
        placements.append(Placement(request.ticket, best.name))
    return Plan(placements=placements)


@dataclass(frozen=True, slots=True)
class SloPolicy:
    """LDF queue, TTFT rejection, VBS admission with the KV fit, and credits; each can be
    switched off for ablation (with all off it is FIFO under the in-flight bound).
    ``rolling`` places admitted requests by macro instance and rolling activation instead of
    by least budget used. ``commit``: the TTFT guard decides at arrival and protects what it
    admitted (``admission.commitments``, cautious by ``overrun``) instead of re-deciding the
    whole queue each pass."""

    ldf: bool = True
    reject: bool = True
    vbs: bool = True
    credits: bool = True
    margin_s: float = 0.05
    epsilon: float = 1.3
    admit_margin: float = 0.99
    urgent_s: float = 0.1
    rolling: bool = False
    commit: bool = False
    overrun: float = 0.3
    stretch: bool = True
    prefix_weight: float = 0.5
    session_weight: float = 0.2
    adapter_weight: float = 1.0

    def __call__(
        self, waiting: Sequence[WaitingView], backends: Sequence[BackendView], now: float
    ) -> Plan:
        ordered = sorted(waiting, key=ldf_key if self.ldf else fifo_key)
        loads = {b.name: BackendLoad.of(b) for b in backends}
        rejections: list[Rejection] = []
        committed: list[int] = []
        if self.reject and self.commit:
            decided = commitments(
                ordered,
                loads,
                now=now,
                margin_s=self.margin_s,
                epsilon=self.epsilon,
                admit_margin=self.admit_margin,
                vbs=self.vbs,
                overrun=self.overrun,
                stretch=self.stretch,
            )
            committed = decided.committed
            rejections = [
                *(Rejection(t, "ttft_unattainable", p) for t, p in decided.refused.items()),
                *(Rejection(t, "ttft_late", p) for t, p in decided.late.items()),
            ]
        elif self.reject:
            rejected = ttft_rejections(
                ordered,
                loads,
                now=now,
                margin_s=self.margin_s,
                epsilon=self.epsilon,
                admit_margin=self.admit_margin,
                vbs=self.vbs,
            )
            rejections = [
                Rejection(t, "ttft_unattainable", predicted) for t, predicted in rejected.items()
            ]
        if rejections:
            gone = {r.ticket for r in rejections}
            ordered = [w for w in ordered if w.ticket not in gone]
        tightest = self._tightest(ordered, loads.values())
        scarce = self._scarce(ordered, loads.values(), tightest) if self.credits else set()
        placements: list[Placement] = []
        credits: dict[int, float] = {}
        blocked: set[str] = set()
        held: dict[str, int] = {}  # model -> the fewest slots to leave that held a request
        loading_at: dict[str, str] = {}  # adapter -> the backend placed to load it this pass
        models = {w.model for w in ordered}
        instances = cycles(loads.values()) if self.rolling else None
        picker = self._picker(instances)
        context = Context(now, self.epsilon)
        for w in ordered:
            if len(blocked) == len(models):
                break  # every model's queue is held: nothing further can move this pass
            trp = tightness(w.tpot_s, tightest.get(w.model, math.inf))
            if w.model in blocked:
                continue
            candidates = eligible(loads.values(), w)
            if loading_at:
                candidates = [c for c in candidates if self._may_load(w, c, loading_at)]
            if not candidates:
                if w.deadline <= now and w.rejectable:
                    # Held through a cold start (or after failures) until its deadline.
                    rejections.append(Rejection(w.ticket, "no_ready_backend"))
                continue
            if w.model in scarce:
                credit = credit_after_pass(w.credit, trp)
                credits[w.ticket] = credit
                if credit < 1.0 and not self._urgent(w, candidates, now):
                    continue
            found = verdicts(
                candidates, w, vbs=self.vbs, epsilon=self.epsilon, margin=self.admit_margin
            )
            admitting = [load for load in candidates if found[load.view.name] is Verdict.OK]
            if admitting and w.leave_slots and self._held_for(w, candidates, tightest, held):
                continue  # the model's last slots are kept for tenants below its share
            if admitting:
                best = picker.pick(admitting, w, context)
                if best is None:
                    blocked.add(w.model)  # no instance's check passes: it waits, in LDF order
                    continue
                best.add(w)
                if w.model in best.view.loadable:
                    loading_at.setdefault(w.model, best.view.name)
                placements.append(Placement(w.ticket, best.view.name, priority_tier(trp)))
                if w.ticket in credits:
                    credits[w.ticket] = credits[w.ticket] - 1.0
                continue
            idle = [load for load in candidates if load.count == 0]
            if all(never_fits(load, w) for load in candidates):
                # Its KV estimate exceeds every cache even empty: the estimate is high (the
                # arrival check let it through), so it goes alone to an idle backend, whose
                # engine decides; until then it waits without holding up those behind it.
                if idle:
                    idle[0].add(w)
                    placements.append(Placement(w.ticket, idle[0].view.name, priority_tier(trp)))
                continue
            if idle and all(v in (Verdict.TPOT, Verdict.TPOT_OWN) for v in found.values()):
                # Not even an idle backend would decode it fast enough.
                if w.rejectable and self.reject:
                    rejections.append(Rejection(w.ticket, "tpot_unattainable"))
                elif not w.rejectable:
                    idle[0].add(w)  # best effort: served without a guarantee
                    placements.append(Placement(w.ticket, idle[0].view.name, priority_tier(trp)))
                continue
            if all(v is Verdict.TPOT_OWN for v in found.values()):
                continue  # SCORPIO's shortcut: its own tight target must not block looser ones
            blocked.add(w.model)  # keep LDF order: nothing behind it jumps ahead
        activations = {c.instance: c.activation() for c in instances or () if c.changed}
        return Plan(placements, rejections, credits, activations, committed)

    def _picker(self, instances: list[Cycle] | None) -> Picker:
        """Rolling activation, or the scorers: the share of its budgets a request would use,
        less the cached share of its prompt and its session's affinity, each weighed (affinity
        is a score, not a rule: an idle backend without the prefix still wins over a loaded
        one with it when the budgets say so)."""
        if instances is not None:
            return Rolling(instances, self.admit_margin)
        return Scored(
            (
                (1.0, budget_used),
                (self.prefix_weight, prefix_hit),
                (self.session_weight, session_affinity),
                (self.adapter_weight, adapter_load),
            )
        )

    @staticmethod
    def _tightest(waiting: Sequence[WaitingView], loads: Iterable[BackendLoad]) -> dict[str, float]:
        """Per model, the tightest TPOT target among waiting and in-flight requests."""
        tightest: dict[str, float] = {}
        for w in waiting:
            tightest[w.model] = min(tightest.get(w.model, math.inf), w.tpot_s)
        for load in loads:
            for model in load.view.models:
                if model in tightest:
                    tightest[model] = min(tightest[model], load.min_tpot)
        return tightest

    def _scarce(
        self,
        waiting: Sequence[WaitingView],
        loads: Iterable[BackendLoad],
        tightest: dict[str, float],
    ) -> set[str]:
        """The models whose waiting requests outnumber the slots their backends could take
        now (VBS admission's room at the model's tightest target). Credits ration slots among
        tiers: where every waiting request has one, they hold nobody back (a loose request
        would only wait passes for a slot no one else wants, and lose that time of its TTFT)."""
        wanted = Counter(w.model for w in waiting)
        serving = [load for load in loads if load.view.healthy]
        scarce = set()
        for model, count in wanted.items():
            room = total_headroom(
                [load for load in serving if load.view.offers(model)],
                tightest.get(model, math.inf),
                vbs=self.vbs,
                epsilon=self.epsilon,
                margin=self.admit_margin,
            )
            if count > room:
                scarce.add(model)
        return scarce

    def _held_for(
        self,
        w: WaitingView,
        candidates: list[BackendLoad],
        tightest: dict[str, float],
        held: dict[str, int],
    ) -> bool:
        """Taking a slot would leave fewer than ``w.leave_slots`` on its model's backends for
        the tenants below its share (once that holds a request, it holds any asked to leave
        as many or more in the same pass: room only shrinks)."""
        if w.leave_slots >= held.get(w.model, w.leave_slots + 1):
            return True
        room = total_headroom(
            candidates,
            tightest.get(w.model, math.inf),
            vbs=self.vbs,
            epsilon=self.epsilon,
            margin=self.admit_margin,
        )
        if room - 1 >= w.leave_slots:
            return False
        held[w.model] = w.leave_slots
        return True

    @staticmethod
    def _may_load(w: WaitingView, load: BackendLoad, loading_at: dict[str, str]) -> bool:
        """What this pass's adapter loads leave open: one load of an adapter at a time, one
        load per backend, and no request for an adapter a load there evicts."""
        name = load.view.name
        if w.model in load.view.loadable:
            if w.model in loading_at:
                return loading_at[w.model] == name
            return name not in loading_at.values()
        evicted = load.view.evicts
        return not (evicted == w.model and name in loading_at.values())

    def _urgent(self, w: WaitingView, candidates: list[BackendLoad], now: float) -> bool:
        """The TTFT guard's override: a request whose deadline is near is eligible at once."""
        prefill = min(first_token_in(load, w) for load in candidates)
        return w.deadline - now - prefill < self.urgent_s
