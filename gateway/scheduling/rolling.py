"""Rolling prefill activation inside macro instances (ALGORITHMS.md §5, EcoServe).

In each macro instance one backend at a time is *active*: new requests go there while the
others only decode. It keeps taking them while EcoServe's Algorithm 1 check passes; then the
next backend in the cycle becomes active. A pass chooses the instance with the most decode
headroom first. Pure functions over the snapshot, like the guards they follow.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from gateway.scheduling.guards import BackendLoad, decode_headroom
from gateway.scheduling.snapshot import Activation, WaitingView


class Check(enum.Enum):
    PASS = "pass"
    TTFT = "ttft"  # the prefills sent since activation, and this one, outrun its budget
    DECODE = "decode"  # the decoding requests' saved slack cannot absorb those prefills
    KV = "kv"  # its prompt and predicted output do not fit the free KV cache


def check(load: BackendLoad, w: WaitingView, sent: Iterable[int], now: float) -> Check:
    """EcoServe's Algorithm 1 for request ``w`` on one backend, in its gateway form.

    t_total is the predicted prefill of every request sent since the backend became active,
    plus ``w``'s. It must fit ``w``'s remaining TTFT budget (a gateway queue has already
    spent part of S_TT); the mean saved TPOT of the requests decoding there (from the
    streams the gateway relays) must cover it; and ``w`` must fit the free KV cache."""
    view = load.view
    prefill = view.prefill
    t_total = 0.0
    if prefill is not None:
        t_total = sum(prefill.predict(tokens) for tokens in (*sent, w.prompt_tokens))
    if t_total > w.deadline - now:
        return Check.TTFT
    slack = [s for r in view.requests if math.isfinite(s := r.saved_s(now))]
    if slack and sum(slack) / len(slack) < t_total:
        return Check.DECODE
    if view.kv_capacity is not None and load.kv_reserved + w.reserve_tokens > view.kv_capacity:
        return Check.KV
    return Check.PASS


@dataclass(slots=True)
class Cycle:
    """One macro instance during a pass: its members in cycle order and who is active."""

    instance: str
    members: list[BackendLoad]
    active: int = 0
    since: float = -math.inf
    sent: list[int] = field(default_factory=list)
    changed: bool = False

    def activation(self) -> Activation:
        return Activation(self.members[self.active].view.name, self.since, tuple(self.sent))


def cycles(loads: Iterable[BackendLoad]) -> list[Cycle]:
    """The instances of a pass, from the backends' rolling views; a backend with none is an
    instance of its own."""
    groups: dict[str, list[BackendLoad]] = {}
    for load in loads:
        rolling = load.view.rolling
        groups.setdefault(rolling.instance if rolling else load.view.name, []).append(load)
    result = []
    for instance, members in sorted(groups.items()):
        members.sort(key=lambda m: (m.view.rolling.position if m.view.rolling else 0, m.view.name))
        cycle = Cycle(instance, members)
        actives = [
            (r.active_since, i, r.sent_prompts)
            for i, m in enumerate(members)
            if (r := m.view.rolling) is not None and r.active_since is not None
        ]
        if actives:
            since, cycle.active, sent = max(actives)
            cycle.since, cycle.sent = since, list(sent)
        result.append(cycle)
    return result


def pick(
    instances: list[Cycle],
    admitting: Collection[str],
    w: WaitingView,
    now: float,
    *,
    epsilon: float,
    margin: float,
) -> BackendLoad | None:
    """Where ``w`` goes: the instance with the most decode headroom among those with a
    backend that admits it, and inside it the active backend if the check passes, else the
    next in the cycle that passes (which becomes active). None: it waits."""

    def headroom(cycle: Cycle) -> int:
        return sum(
            decode_headroom(m, w.tpot_s, epsilon=epsilon, margin=margin)
            for m in cycle.members
            if m.view.name in admitting
        )

    open_ = [c for c in instances if any(m.view.name in admitting for m in c.members)]
    for cycle in sorted(open_, key=lambda c: (-headroom(c), c.instance)):
        size = len(cycle.members)
        for step in range(size):
            index = (cycle.active + step) % size
            member = cycle.members[index]
            if member.view.name not in admitting:
                continue
            sent = cycle.sent if step == 0 else []
            if check(member, w, sent, now) is not Check.PASS:
                continue
            if step or cycle.since == -math.inf:
                cycle.active, cycle.since, cycle.sent = index, now, []
            cycle.sent.append(w.prompt_tokens)
            cycle.changed = True
            return member
    return None
