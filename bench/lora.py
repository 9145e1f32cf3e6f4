"""Benchmark of LoRA adapter placement (``gateway.lora``).

Virtual time (bench.virtual_gateway: the gateway's scheduler, policy, latency models, length
predictor and adapter book against the simulator's engine model). Four simulated
Llama-3.1-8B/H100 servers, each holding at most 4 adapters at once (vLLM's --max-loras 4); 32
adapters, each request naming one drawn by Zipf popularity (exponent 1); a load takes 0.5 s
(an assumed figure for a rank-16 adapter of an 8B model read from local disk; the engine
model adds no per-step LoRA cost). ShareGPT prompts, SCORPIO's six classes drawn uniformly,
arrivals by the Azure conversation trace's gaps, at 0.5x and 1x the fleet's capacity (the
capacity of plain requests). Each load runs three ways:

- ``aware``: Sluice's placement: a backend holding the adapter scores ahead; where none can
  take it, it is loaded on one backend with a free (or freeable) slot, its load's time
  counted in the TTFT guard; one load of an adapter at a time;
- ``blind``: the same gateway placing as if every backend held every adapter; the backend a
  request lands on loads its adapter on arrival (evicting its least recently used idle one,
  or waiting for one to go idle);
- ``everywhere``: placed blind, and a miss loads the adapter on every backend at once.

Writes bench/reports/lora.{json,md,png}.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

from bench.data import load_sharegpt
from bench.guards import BACKENDS, capacity_per_backend, summarize
from bench.publish import REPORTS, publish
from bench.sim.profiles import get_profile
from bench.stats import percentile
from bench.virtual_gateway import AdapterSetup, run_virtual
from bench.workload import SCORPIO_CLASSES, Planned, Result, azure_gaps, plan, scaled_arrivals
from gateway.config import LatencyPrior, SchedulerConfig
from predictor import artifact
from predictor.model import LengthModel

ADAPTERS = tuple(f"lora-{i:02d}" for i in range(32))
SLOTS = 4
LOAD_S = 0.5
ZIPF = 1.0
MODES = ("aware", "blind", "everywhere")


def zipf_adapters(items: list[Planned], seed: int) -> list[Planned]:
    """Each request names an adapter drawn by Zipf popularity (rank r weighs 1 / r**ZIPF)."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** ZIPF for rank in range(len(ADAPTERS))]
    names = rng.choices(ADAPTERS, weights, k=len(items))
    return [
        Planned(i.at, i.sample, i.slo_class, i.max_tokens, i.tenant, name)
        for i, name in zip(items, names, strict=True)
    ]


def run_mode(items: list[Planned], span: float, lengths: LengthModel, mode: str) -> dict[str, Any]:
    started = time.monotonic()
    counters: dict[str, int] = {}
    outcome = run_virtual(
        items,
        profile=get_profile("llama8b-h100"),
        backends=BACKENDS,
        scheduler=SchedulerConfig(),
        max_in_flight=256,
        prior=LatencyPrior(),
        lengths=lengths,
        adapters=AdapterSetup(ADAPTERS, SLOTS, LOAD_S, mode),
        counters=counters,
    )
    summary = summarize(outcome, 1.0, span)
    summary["adapter_loads"] = counters.get("adapter_loads", 0)
    served: list[Result] = [r for r in outcome if r.status == 200 and r.ttft_s is not None]
    summary["ttft_p90_ms"] = _ms(percentile([r.ttft_s or 0.0 for r in served], 90))
    summary["wall_s"] = round(time.monotonic() - started, 1)
    return summary


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def run(args: argparse.Namespace) -> dict[str, Any]:
    samples = [s for s in load_sharegpt() if s.prompt_tokens < 6000]
    capacity = capacity_per_backend(samples, args.max_tokens) * BACKENDS
    print(f"capacity: {capacity:.1f} req/s for the fleet", flush=True)
    lengths = artifact.load().model
    gaps = azure_gaps()
    results: dict[str, dict[str, Any]] = {}
    for load in args.loads:
        arrivals = scaled_arrivals(gaps, args.requests, load * capacity, offset=1000)
        items = plan(samples, arrivals, list(SCORPIO_CLASSES), seed=int(load * 100), max_tokens=512)
        items = zipf_adapters(items, seed=int(load * 100))
        span = items[-1].at
        results[f"{load:g}"] = row = {}
        for mode in MODES:
            row[mode] = s = run_mode(items, span, lengths, mode)
            print(
                f"load {load:g} {mode}: goodput {s['goodput_rps']:.1f} req/s, TTFT p50 "
                f"{s['ttft_p50_ms'] or 0:.0f} ms p99 {s['ttft_p99_ms'] or 0:.0f} ms, rejected "
                f"{s['rejection_rate']:.3f}, loads {s['adapter_loads']} ({s['wall_s']} s)",
                flush=True,
            )
    return {
        "benchmark": "lora",
        "mode": "virtual",
        "backends": BACKENDS,
        "profile": "llama8b-h100",
        "capacity_rps": capacity,
        "adapters": len(ADAPTERS),
        "zipf": ZIPF,
        "max_loras": SLOTS,
        "load_s": LOAD_S,
        "requests_per_run": args.requests,
        "results": results,
    }


def _cell(value: float | None, spec: str = ".0f") -> str:
    return "" if value is None else format(value, spec)


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# LoRA adapter placement",
        "",
        f"Virtual time. {data['backends']} simulated `{data['profile']}` servers, "
        f"--max-loras {data['max_loras']}; {data['adapters']} adapters by Zipf popularity "
        f"(exponent {data['zipf']:g}), a load taking {data['load_s']:g} s; loads as multiples "
        f"of the fleet's capacity ({data['capacity_rps']:.1f} req/s), "
        f"{data['requests_per_run']} requests per run.",
        "",
        "Command: `python -m bench.lora`",
        "",
        "| load | placement | goodput req/s | x blind | x everywhere | TTFT p50 ms | p90 | p99 | "
        "rejected | predicted late | held for a slot | adapter loads |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for load, row in data["results"].items():
        for mode, s in row.items():
            reasons = s["reject_reasons"]
            blind = row["blind"]["goodput_rps"]
            everywhere = row["everywhere"]["goodput_rps"]
            lines.append(
                f"| {load}x | {mode} | {s['goodput_rps']:.1f} | "
                f"{_cell(s['goodput_rps'] / blind if blind else None, '.2f')} | "
                f"{_cell(s['goodput_rps'] / everywhere if everywhere else None, '.2f')} | "
                f"{_cell(s['ttft_p50_ms'])} | {_cell(s['ttft_p90_ms'])} | "
                f"{_cell(s['ttft_p99_ms'])} | {s['rejection_rate']:.3f} | "
                f"{reasons.get('ttft_unattainable', 0)} | {reasons.get('error', 0)} | "
                f"{s['adapter_loads']} |"
            )
    lines += [
        "",
        "Refusals: *predicted late*, by the TTFT guard (a load's time counted where one is "
        "needed); *held for a slot*, requests for an adapter that no backend held or had a "
        "slot free for (every slot's adapter busy) before their deadline (`no_ready_backend`). "
        "Attainment of what was served:",
        "",
        "| load | " + " | ".join(MODES) + " |",
        "|---|" + "---|" * len(MODES),
    ]
    for load, row in data["results"].items():
        cells = [_cell(row[m]["attainment_admitted"], ".3f") for m in MODES]
        lines.append(f"| {load}x | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = list(data["results"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.25
    for offset, mode in enumerate(MODES):
        xs = [i + (offset - 1) * width for i in range(len(loads))]
        left.bar(xs, [data["results"][ld][mode]["goodput_rps"] for ld in loads], width, label=mode)
        right.bar(
            xs, [data["results"][ld][mode]["ttft_p90_ms"] or 0 for ld in loads], width, label=mode
        )
    left.set_ylabel("goodput (req/s on target)")
    right.set_ylabel("TTFT p90 (ms)")
    for ax in (left, right):
        ax.set_xticks(range(len(loads)), [f"{ld}x" for ld in loads])
        ax.set_xlabel("load (x fleet capacity)")
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, default=REPORTS)
    args = parser.parse_args()
    data = run(args)
    publish(args.out, "lora", data, markdown(data), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
