"""Where one request goes, once the queue-level guards let it through: filters, then weighted
scorers, then a pick.

- filters: the backend serves the model (or could load its LoRA adapter; in the pool asked
  for, if any), is healthy and not excluded (``eligible``); then
  admission, VBS with the KV fit or the in-flight bound alone (``verdicts``), whose verdicts
  the policy also reads to decide whether the request waits;
- scorers: each a small function of one backend's load and the request, lower is better,
  weighed and summed by a ``Scored`` picker: the share of its budgets it would use, the share
  of its prompt cached there, its session's last backend, whether its LoRA adapter must be
  loaded there first;
- pickers: ``Scored`` (the lowest weighted score; ties by the summed budget shares, then the
  backend sent the fewest requests, then name), or rolling activation inside macro instances
  (``Rolling``), which may also say "wait".

A new scorer is one function and one weight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gateway.scheduling.guards import BackendLoad, Verdict, admit, placement_cost, prefix_share
from gateway.scheduling.rolling import Cycle, pick
from gateway.scheduling.snapshot import WaitingView


@dataclass(frozen=True, slots=True)
class Context:
    now: float
    epsilon: float


Scorer = Callable[[BackendLoad, WaitingView, Context], float]


def eligible(loads: Iterable[BackendLoad], w: WaitingView) -> list[BackendLoad]:
    return [
        load
        for load in loads
        if load.view.healthy
        and load.view.offers(w.model)
        and load.view.name not in w.excluded
        and (w.demand.pool is None or load.view.pool == w.demand.pool)
    ]


def verdicts(
    candidates: Sequence[BackendLoad], w: WaitingView, *, vbs: bool, epsilon: float, margin: float
) -> dict[str, Verdict]:
    """Each candidate's admission of ``w``: VBS with the KV fit, or the in-flight bound."""
    if vbs:
        return {
            load.view.name: admit(load, w, epsilon=epsilon, margin=margin) for load in candidates
        }
    return {
        load.view.name: Verdict.OK if load.count < load.view.max_in_flight else Verdict.FULL
        for load in candidates
    }


def budget_used(load: BackendLoad, w: WaitingView, ctx: Context) -> float:
    """The larger of the shares of its TTFT and TPOT budgets ``w`` would use there."""
    return placement_cost(load, w, now=ctx.now, epsilon=ctx.epsilon)[0]


def prefix_hit(load: BackendLoad, w: WaitingView, ctx: Context) -> float:
    """Minus the share of its prompt expected in the backend's prefix cache."""
    return -prefix_share(load, w)


def adapter_load(load: BackendLoad, w: WaitingView, ctx: Context) -> float:
    """One where the request's LoRA adapter must first be loaded."""
    return 1.0 if w.model in load.view.loadable else 0.0


def session_affinity(load: BackendLoad, w: WaitingView, ctx: Context) -> float:
    """Minus one on the backend its session's last request went to."""
    return -1.0 if w.affine is not None and w.affine == load.view.name else 0.0


class Picker:
    def pick(
        self, admitting: list[BackendLoad], w: WaitingView, ctx: Context
    ) -> BackendLoad | None:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Scored(Picker):
    scorers: tuple[tuple[float, Scorer], ...]

    def pick(
        self, admitting: list[BackendLoad], w: WaitingView, ctx: Context
    ) -> BackendLoad | None:
        def key(load: BackendLoad) -> tuple[float, float, int, str]:
            _, total, dispatched, name = placement_cost(load, w, now=ctx.now, epsilon=ctx.epsilon)
            score = 0.0
            for weight, scorer in self.scorers:
                if weight:
                    score += weight * scorer(load, w, ctx)
            return (score, total, dispatched, name)

        return min(admitting, key=key)


@dataclass(slots=True)
class Rolling(Picker):
    """Rolling activation in macro instances (``rolling.pick``) for one pass."""

    instances: list[Cycle]
    margin: float

    def pick(
        self, admitting: list[BackendLoad], w: WaitingView, ctx: Context
    ) -> BackendLoad | None:
        names = {load.view.name for load in admitting}
        return pick(self.instances, names, w, ctx.now, epsilon=ctx.epsilon, margin=self.margin)
