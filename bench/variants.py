"""Benchmark of degrading to a cheaper variant under bursts (``gateway.scheduling.degrade``).

Virtual time (bench.virtual_gateway: the gateway's scheduler, policy, latency models and
length predictor against the simulator's engine model). A full-precision pool of four
simulated Llama-3.1-8B/H100 servers and a variant pool of two servers of the same model with
4-bit weights (profile ``llama8b-h100-w4a16``, bench/sim/profiles.py says where its figures
come from). ShareGPT prompts, SCORPIO's six classes drawn uniformly, arrivals by the gaps of
the Azure code trace (its bursts), at 1x, 1.5x and 2x the full pool's capacity. Each load
runs with degrading off (the variant pool idles: every request the full pool cannot serve in
time is refused), ``when_unattainable`` and ``prefer_fast``, every class allowed to degrade.

Writes bench/reports/variants.{json,md,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench.data import load_sharegpt
from bench.guards import capacity_per_backend, prior_for, summarize
from bench.publish import REPORTS, publish
from bench.sim.profiles import get_profile
from bench.virtual_gateway import MODEL, VariantPool, run_virtual
from bench.workload import SCORPIO_CLASSES, Result, azure_gaps, plan, scaled_arrivals
from gateway.config import Degrade, LatencyPrior, SchedulerConfig
from gateway.scheduling.degrade import PressureRules
from predictor import artifact
from predictor.model import LengthModel

FULL = "llama8b-h100"
VARIANT_PROFILE = "llama8b-h100-w4a16"
VARIANT = "virtual-model-w4a16"
FULL_BACKENDS = 4
VARIANT_BACKENDS = 2
MODES: tuple[Degrade, ...] = ("never", "when_unattainable", "prefer_fast")
LABELS = {
    "never": "degrade off (refuse)",
    "when_unattainable": "when_unattainable",
    "prefer_fast": "prefer_fast",
}
TARGET_LOAD = 1.5
TARGET_RATIO = 1.4  # goodput with when_unattainable over refusing, at TARGET_LOAD


def run_mode(
    items: list[Any], span: float, lengths: LengthModel, degrade: Degrade
) -> dict[str, Any]:
    started = time.monotonic()
    variant_engine = get_profile(VARIANT_PROFILE)
    outcome = run_virtual(
        items,
        profile=get_profile(FULL),
        backends=FULL_BACKENDS,
        scheduler=SchedulerConfig(),
        max_in_flight=256,
        prior=LatencyPrior(),
        lengths=lengths,
        variant=VariantPool(
            VARIANT,
            variant_engine,
            VARIANT_BACKENDS,
            prior_for(variant_engine),
            degrade,
            PressureRules(),
        ),
    )
    summary = summarize(outcome, 1.0, span)
    summary.update(degraded_counts(outcome))
    summary["wall_s"] = round(time.monotonic() - started, 1)
    return summary


def degraded_counts(outcome: list[Result]) -> dict[str, Any]:
    """Every request served by the variant, counted per class, with how many met targets."""

    def good(r: Result) -> bool:
        ttft_ms, tpot_ms = SCORPIO_CLASSES[r.slo_class]
        return (
            r.ttft_s is not None
            and r.ttft_s * 1000 <= ttft_ms
            and (r.tpot_s is None or r.tpot_s * 1000 <= tpot_ms)
        )

    degraded = [r for r in outcome if r.status == 200 and r.model not in (None, MODEL)]
    return {
        "degraded": len(degraded),
        "degraded_good": sum(good(r) for r in degraded),
        "degraded_share": len(degraded) / len(outcome),
        "degraded_per_class": {
            name: sum(r.slo_class == name for r in degraded) for name in SCORPIO_CLASSES
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    samples = [s for s in load_sharegpt() if s.prompt_tokens < 6000]
    per_backend = capacity_per_backend(samples, args.max_tokens, FULL)
    variant_per_backend = capacity_per_backend(samples, args.max_tokens, VARIANT_PROFILE)
    capacity = per_backend * FULL_BACKENDS
    print(
        f"capacity: full {per_backend:.1f} req/s per server ({capacity:.1f} for the pool), "
        f"variant {variant_per_backend:.1f} per server",
        flush=True,
    )
    lengths = artifact.load().model
    gaps = azure_gaps("azure2023_code.csv")
    results: dict[str, dict[str, Any]] = {}
    for load in args.loads:
        rate = load * capacity
        arrivals = scaled_arrivals(gaps, args.requests, rate, offset=1000)
        items = plan(
            samples,
            arrivals,
            list(SCORPIO_CLASSES),
            seed=int(load * 100),
            max_tokens=args.max_tokens,
        )
        span = items[-1].at
        results[f"{load:g}"] = row = {}
        for mode in MODES:
            row[mode] = summary = run_mode(items, span, lengths, mode)
            print(
                f"load {load:g} {mode}: goodput {summary['goodput_rps']:.1f} req/s, "
                f"rejected {summary['rejection_rate']:.3f}, degraded "
                f"{summary['degraded_share']:.3f} ({summary['wall_s']} s)",
                flush=True,
            )
    return {
        "benchmark": "variants",
        "mode": "virtual",
        "full": {"profile": FULL, "backends": FULL_BACKENDS, "capacity_rps": capacity},
        "variant": {
            "profile": VARIANT_PROFILE,
            "backends": VARIANT_BACKENDS,
            "capacity_rps": variant_per_backend * VARIANT_BACKENDS,
        },
        "trace": "azure2023_code",
        "requests_per_run": args.requests,
        "max_tokens": args.max_tokens,
        "pressure": {
            "enter_share": PressureRules().enter_share,
            "leave_share": PressureRules().leave_share,
            "half_life_s": PressureRules().half_life_s,
            "min_dwell_s": PressureRules().min_dwell_s,
        },
        "results": results,
    }


def _ratio(results: dict[str, Any], load: str, mode: str) -> float | None:
    row = results.get(load)
    if row is None or not row["never"]["goodput_rps"]:
        return None
    return float(row[mode]["goodput_rps"] / row["never"]["goodput_rps"])


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def markdown(data: dict[str, Any]) -> str:
    full, variant = data["full"], data["variant"]
    lines = [
        "# Degrading to a variant under bursts",
        "",
        f"Virtual time. Full pool: {full['backends']} simulated `{full['profile']}` servers "
        f"({full['capacity_rps']:.1f} req/s saturated, this mix); variant pool: "
        f"{variant['backends']} `{variant['profile']}` servers ({variant['capacity_rps']:.1f} "
        f"req/s). Arrivals by the {data['trace']} trace's gaps, loads as multiples of the full "
        f"pool's capacity, {data['requests_per_run']} requests per run, SCORPIO's six classes. "
        "Every class may degrade in the degrading runs. Pressure: on above "
        f"{data['pressure']['enter_share']:.0%} refused, off below "
        f"{data['pressure']['leave_share']:.0%} with the queue empty after "
        f"{data['pressure']['min_dwell_s']:g} s on (half-life {data['pressure']['half_life_s']:g} "
        "s).",
        "",
        "Command: `python -m bench.variants`",
        "",
        "| load | degrade | goodput req/s | x refusing | attainment (offered) | rejected | "
        "degraded | degraded on target | TTFT p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for load, row in data["results"].items():
        for mode, s in row.items():
            ratio = _ratio(data["results"], load, mode)
            p99 = s["ttft_p99_ms"]
            lines.append(
                f"| {load}x | {LABELS[mode]} | {s['goodput_rps']:.1f} | "
                f"{'' if ratio is None else f'{ratio:.2f}'} | {s['attainment_offered']:.3f} | "
                f"{s['rejection_rate']:.3f} | {s['degraded']} ({s['degraded_share']:.1%}) | "
                f"{s['degraded_good']} | {'' if p99 is None else f'{p99:.0f}'} |"
            )
    lines += ["", "Degraded requests per class (every one counted, from the run's results):", ""]
    lines += ["| load | degrade | " + " | ".join(SCORPIO_CLASSES) + " |"]
    lines += ["|---|---|" + "---|" * len(SCORPIO_CLASSES)]
    for load, row in data["results"].items():
        for mode in ("when_unattainable", "prefer_fast"):
            counts = row[mode]["degraded_per_class"]
            lines.append(
                f"| {load}x | {mode} | "
                + " | ".join(str(counts[c]) for c in SCORPIO_CLASSES)
                + " |"
            )
    lines += ["", "## Target", ""]
    ratio = _ratio(data["results"], f"{TARGET_LOAD:g}", "when_unattainable")
    if ratio is None:
        lines.append(f"Not measured: no run at {TARGET_LOAD:g}x.")
    else:
        verdict = "met" if ratio >= TARGET_RATIO else "missed"
        row = data["results"][f"{TARGET_LOAD:g}"]["never"]
        ceiling = row["offered"] / row["good"] if row["good"] else None
        lines.append(
            f"- Goodput with `when_unattainable` at {TARGET_LOAD:g}x: {ratio:.2f}x refusing "
            f"(target >= {TARGET_RATIO:g}x): {verdict}. Had every offered request been served "
            f"on target, the ratio would be {_cell(ceiling)}x (refusing meets "
            f"{row['good']} of {row['offered']})."
        )
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = list(data["results"])
    x = [float(load) for load in loads]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in MODES:
        left.plot(
            x, [data["results"][ld][mode]["goodput_rps"] for ld in loads], "o-", label=LABELS[mode]
        )
        right.plot(
            x,
            [data["results"][ld][mode]["degraded_share"] for ld in loads],
            "o-",
            label=LABELS[mode],
        )
    left.set_ylabel("goodput (req/s on target)")
    right.set_ylabel("share of requests degraded")
    for ax in (left, right):
        ax.set_xlabel("load (x full pool capacity)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loads", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    # Long enough a run that the work admitted before the last arrival, served after it, does
    # not dominate: a burst's overload must outlast the TTFT budgets (up to 7.5 s).
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, default=REPORTS)
    args = parser.parse_args()
    data = run(args)
    publish(args.out, "variants", data, markdown(data), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
