"""Driving an Engine in virtual time: exact, fast, and free of event-loop noise.

Used for calibration: what the engine model itself says, before any HTTP is involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.sim.engine import Engine, SimRequest
from bench.sim.profiles import Profile


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float
    prompt_tokens: int
    output_tokens: int
    priority: int = 0
    known_hit: int = 0  # prompt tokens taken as cached (Engine.submit)


def simulate(profile: Profile, arrivals: Sequence[Arrival], *, seed: int = 0) -> list[SimRequest]:
    """Run every arrival to completion; return the requests in arrival order with timings."""
    clock = [0.0]
    engine = Engine(profile, seed=seed, clock=lambda: clock[0])
    pending = sorted(arrivals, key=lambda a: a.at)
    requests: list[SimRequest] = []
    index = 0
    while index < len(pending) or engine.running or engine.waiting:
        while index < len(pending) and pending[index].at <= clock[0]:
            a = pending[index]
            requests.append(
                engine.submit(
                    a.prompt_tokens,
                    a.output_tokens,
                    a.priority,
                    stream=False,
                    now=a.at,
                    known_hit=a.known_hit,
                )
            )
            index += 1
        step = engine.plan(clock[0])
        if step is None:
            if index >= len(pending):
                break
            clock[0] = pending[index].at
            continue
        clock[0] += step.duration
        engine.complete(step, clock[0])
    return requests
