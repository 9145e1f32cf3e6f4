"""Benchmark of tenants' fair share under overload, and of what keys and limits cost.

Part 1, fair share (virtual time: the gateway's scheduler, policy, latency models and length
predictor against the simulator's engine model, bench.virtual_gateway). Four simulated
Llama-3.1-8B/H100 servers; ShareGPT prompts; SCORPIO's six classes drawn uniformly; arrivals
by the Azure conversation trace's gaps. Two tenants of equal weight: A sends at 0.4x the
fleet's capacity, B at 1x, 2x and 3x. Each B rate runs with fair share on and off, and A
alone runs once on the same fleet with the same arrivals.

Part 2, overhead (real sockets: a simulator process and a gateway process): the time from
request to reply through the gateway with client keys and per-tenant limits, against the
same gateway with neither, interleaved in rounds; once on the embedded store and once on
Redis (where each request's limit check is one Lua call).

Writes bench/reports/tenants.{json,md,png}.
"""

from __future__ import annotations

import argparse
import heapq
import sys
import time
from pathlib import Path
from typing import Any

from bench.data import PromptSample, load_sharegpt
from bench.guards import BACKENDS, capacity_per_backend, summarize
from bench.publish import REPORTS, publish
from bench.sim.profiles import get_profile
from bench.virtual_gateway import run_virtual
from bench.workload import SCORPIO_CLASSES, Planned, Result, azure_gaps, plan, scaled_arrivals
from gateway.config import LatencyPrior, SchedulerConfig, TenantConfig
from predictor import artifact
from predictor.model import LengthModel

A_LOAD = 0.4
TENANTS = {"a": TenantConfig(weight=1.0), "b": TenantConfig(weight=1.0)}
A_TARGET = 0.95  # A keeps this share of its goodput alone, with fair share on
TOTAL_TOLERANCE = 0.05  # total goodput with fair share on, against off


def tenant_load(
    samples: list[PromptSample],
    gaps: list[float],
    tenant: str,
    rate: float,
    span_s: float,
    *,
    offset: int,
    seed: int,
    max_tokens: int,
) -> list[Planned]:
    """Requests of one tenant over ``span_s`` at ``rate``/s by the trace's gaps."""
    count = max(1, round(rate * span_s))
    arrivals = [t for t in scaled_arrivals(gaps, count, rate, offset=offset) if t < span_s]
    items = plan(samples, arrivals, list(SCORPIO_CLASSES), seed=seed, max_tokens=max_tokens)
    return [Planned(i.at, i.sample, i.slo_class, i.max_tokens, tenant) for i in items]


def merged(*loads: list[Planned]) -> list[Planned]:
    return list(heapq.merge(*loads, key=lambda i: i.at))


def run(
    items: list[Planned],
    span_s: float,
    lengths: LengthModel,
    *,
    fair: bool,
) -> dict[str, Any]:
    started = time.monotonic()
    scheduler = SchedulerConfig.model_validate({"fair_share": {"enabled": fair}})
    outcome = run_virtual(
        items,
        profile=get_profile("llama8b-h100"),
        backends=BACKENDS,
        scheduler=scheduler,
        max_in_flight=256,
        prior=LatencyPrior(),
        lengths=lengths,
        tenants=TENANTS,
    )
    summary: dict[str, Any] = {"total": summarize(outcome, 1.0, span_s)}
    for tenant in sorted({r.tenant for r in outcome if r.tenant is not None}):
        mine: list[Result] = [r for r in outcome if r.tenant == tenant]
        summary[tenant] = summarize(mine, 1.0, span_s)
    summary["wall_s"] = round(time.monotonic() - started, 1)
    return summary


def fair_share_part(args: argparse.Namespace) -> dict[str, Any]:
    samples = [s for s in load_sharegpt() if s.prompt_tokens < 6000]
    per_backend = capacity_per_backend(samples, args.max_tokens)
    capacity = per_backend * BACKENDS
    lengths = artifact.load().model
    gaps = azure_gaps()
    span = args.span_s
    print(f"capacity: {capacity:.1f} req/s for the fleet; {span:g} s of arrivals", flush=True)
    common = {"max_tokens": args.max_tokens}
    a_items = tenant_load(
        samples, gaps, "a", A_LOAD * capacity, span, offset=1000, seed=1, **common
    )
    alone = run(a_items, span, lengths, fair=True)
    print(f"A alone: goodput {alone['a']['goodput_rps']:.1f} req/s", flush=True)
    runs: dict[str, Any] = {}
    for b_load in args.b_loads:
        b_items = tenant_load(
            samples, gaps, "b", b_load * capacity, span, offset=5000, seed=2, **common
        )
        items = merged(a_items, b_items)
        for fair in (True, False):
            result = run(items, span, lengths, fair=fair)
            runs.setdefault(f"{b_load:g}", {})["on" if fair else "off"] = result
            print(
                f"B at {b_load:g}x, fair share {'on' if fair else 'off'}: "
                f"A {result['a']['goodput_rps']:.1f} req/s "
                f"({result['a']['goodput_rps'] / alone['a']['goodput_rps']:.3f} of alone), "
                f"B {result['b']['goodput_rps']:.1f}, total {result['total']['goodput_rps']:.1f}"
                f" ({result['wall_s']} s)",
                flush=True,
            )
    return {
        "capacity_rps": capacity,
        "backends": BACKENDS,
        "profile": "llama8b-h100",
        "span_s": span,
        "a_load": A_LOAD,
        "b_loads": args.b_loads,
        "alone": alone,
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--b-loads", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--span-s", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=REPORTS)
    args = parser.parse_args()
    data = {"benchmark": "tenants", "fair_share": fair_share_part(args)}
    publish(args.out, "tenants", data, "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
