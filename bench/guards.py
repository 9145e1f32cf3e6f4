"""Benchmark of the SLO guards, with ablation (issue: SLO guards).

Four simulated Llama-3.1-8B/H100 servers; arrivals from the Azure conversation trace rescaled
to 0.5x-2x the fleet's capacity; ShareGPT prompts (the simulator gives each its real reply
length); SLO classes drawn uniformly from SCORPIO's six. Five gateway configurations, same
arrivals and prompts:
  (i)   least-loaded forwarding, no gateway queue
  (ii)  LDF queue under a static in-flight bound
  (iii) LDF + TTFT rejection
  (iv)  full guards: LDF, rejection, VBS admission with the KV fit, credits
  (v)   full guards without credits
  (vi)  full guards with admission as a commitment: the TTFT guard decides each request at
        arrival and protects those it admitted (gateway.scheduling.admission)
A second part, where decode speed binds: the same servers as the 70B/TP4 profile, SCORPIO's
classes doubled (ALGORITHMS.md §1), ShareGPT prompts of 800 tokens or more, so that the
engine's ITL at full batch passes the tightest TPOT target; (iv), (v) and (vi) there.
Two modes, one report:
  * virtual (default for the ablation): the gateway's own scheduler, policies, online latency
    models and length predictor, driven in virtual time against the simulator's engine
    (bench.virtual_gateway) - thousands of requests per run, as sustained overload needs;
  * http (--http): the whole path over real sockets (simulator and gateway processes, a
    streaming client), time dilated ``--dilation`` times (engine steps, SLOs and latency priors
    alike) so this 2-core machine can stream the tokens; it measures what the gateway costs,
    such as the time to answer a rejection.
Writes bench/reports/guards.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.data import load_sharegpt
from bench.procs import gateway, sim_fleet
from bench.publish import REPORTS, publish
from bench.sim.profiles import Profile, get_profile
from bench.sim.virtual import Arrival, simulate
from bench.stats import percentile
from bench.virtual_gateway import run_virtual
from bench.workload import (
    SCORPIO_CLASSES,
    Planned,
    Result,
    azure_gaps,
    run_open_loop,
    scorpio_load,
)
from gateway.config import LatencyPrior, SchedulerConfig
from predictor import artifact
from predictor.model import LengthModel

MODEL = "llama-3.1-8b"
BACKENDS = 4

CONFIGS: dict[str, dict[str, Any]] = {
    "i_least_loaded": {"scheduler": {"policy": "least_loaded"}, "max_in_flight": 100_000},
    "ii_ldf": {
        "scheduler": {"ldf": True, "reject": False, "vbs": False, "credits": False},
        "max_in_flight": 128,
    },
    "iii_ldf_reject": {
        "scheduler": {"ldf": True, "reject": True, "vbs": False, "credits": False},
        "max_in_flight": 128,
    },
    "iv_full": {"scheduler": {}, "max_in_flight": 256},
    "v_full_no_credits": {"scheduler": {"credits": False}, "max_in_flight": 256},
    "vi_arrival": {"scheduler": {"admission": "arrival"}, "max_in_flight": 256},
}
LABELS = {
    "i_least_loaded": "(i) least-loaded, no queue",
    "ii_ldf": "(ii) LDF only",
    "iii_ldf_reject": "(iii) LDF + rejection",
    "iv_full": "(iv) full guards",
    "v_full_no_credits": "(v) full, no credits",
    "vi_arrival": "(vi) full, admission at arrival",
}
FAST_REJECT_MS = 50.0  # a refusal "at arrival": answered within this of the request's arrival


def capacity_per_backend(
    samples: list[Any], max_tokens: int, profile_name: str = "llama8b-h100"
) -> float:
    """Requests/s one server completes when saturated by this mix (engine model, virtual time)."""
    profile = get_profile(profile_name)
    arrivals = [
        Arrival(i / 200.0, s.prompt_tokens, min(s.output_tokens, max_tokens))
        for i, s in enumerate(samples[:6000])
    ]
    done = simulate(profile, arrivals)
    finishes = sorted(r.finished_at or 0.0 for r in done)
    # Completion rate over the middle of the run, away from ramp-up and drain.
    lo, hi = len(finishes) // 4, 3 * len(finishes) // 4
    return (hi - lo) / (finishes[hi] - finishes[lo])


def summarize(
    results: list[Result],
    dilation: float,
    span_s: float,
    classes: dict[str, tuple[float, float]] = SCORPIO_CLASSES,
) -> dict[str, Any]:
    """Goodput, attainment, latency and refusal figures of one run; ``classes``: each SLO
    class's TTFT and TPOT targets in ms (SCORPIO's by default)."""

    def good(r: Result) -> bool:
        ttft_ms, tpot_ms = classes[r.slo_class]
        return (
            r.status == 200
            and r.ttft_s is not None
            and r.ttft_s / dilation * 1000 <= ttft_ms
            and (r.tpot_s is None or r.tpot_s / dilation * 1000 <= tpot_ms)
        )

    served = [r for r in results if r.status == 200]
    rejected = [r for r in results if r.status == 429]
    admitted = len(results) - len(rejected)
    n_good = sum(good(r) for r in results)
    ttfts = [r.ttft_s / dilation for r in served if r.ttft_s is not None]
    tpots = [r.tpot_s / dilation for r in served if r.tpot_s is not None]
    rejects_ms = [r.elapsed_s * 1000 for r in rejected]
    late = sum(r.reason == "ttft_late" for r in rejected)
    committed = admitted + late  # admitted at first, served or refused late

    def ms(v: float | None) -> float | None:
        return None if v is None else v * 1000

    per_class = {
        name: {
            "offered": sum(r.slo_class == name for r in results),
            "good": sum(good(r) for r in results if r.slo_class == name),
        }
        for name in classes
    }
    return {
        "offered": len(results),
        "served": len(served),
        "good": n_good,
        "rejected": len(rejected),
        "failed": len(results) - len(served) - len(rejected),
        "goodput_rps": n_good / span_s,
        "attainment_offered": n_good / len(results),
        "attainment_admitted": n_good / admitted if admitted else None,
        "rejection_rate": len(rejected) / len(results),
        "ttft_p99_ms": ms(percentile(ttfts, 99)),
        "tpot_p99_ms": ms(percentile(tpots, 99)),
        "ttft_p50_ms": ms(percentile(ttfts, 50)),
        "time_to_reject_p50_ms": percentile(rejects_ms, 50),
        "time_to_reject_p90_ms": percentile(rejects_ms, 90),
        "time_to_reject_p99_ms": percentile(rejects_ms, 99),
        "rejected_fast_share": (
            sum(ms_ <= FAST_REJECT_MS for ms_ in rejects_ms) / len(rejects_ms)
            if rejects_ms
            else None
        ),
        "late_rejections": late,
        "late_share_of_admitted": late / committed if committed else None,
        "reject_reasons": {
            reason: sum(r.reason == reason for r in rejected)
            for reason in sorted({r.reason or "?" for r in rejected})
        },
        "per_class": per_class,
    }


def gateway_config(urls: list[str], name: str, dilation: float) -> dict[str, Any]:
    spec = CONFIGS[name]
    classes = {
        k: {"ttft_ms": t * dilation, "tpot_ms": p * dilation}
        for k, (t, p) in SCORPIO_CLASSES.items()
    }
    return {
        "slo_classes": classes,
        "default_class": "s6",
        "backends": [
            {"name": f"b{i}", "url": u, "max_in_flight": spec["max_in_flight"]}
            for i, u in enumerate(urls)
        ],
        "scheduler": {
            **spec["scheduler"],
            "margin_ms": 50 * dilation,
            "urgent_ms": 100 * dilation,
            "tick_ms": 10 * dilation,
        },
        "latency_prior": LatencyPrior().scaled(dilation).model_dump(),
    }


def dilated_env(dilation: float) -> dict[str, str]:
    """The gateway's timeouts dilated like everything else: a request may wait in its queue
    as long as its dilated TTFT budget allows."""
    return {
        **os.environ,
        "SLUICE_QUEUE_TIMEOUT_S": f"{30 * dilation:g}",
        "SLUICE_FIRST_BYTE_TIMEOUT_S": f"{60 * dilation:g}",
        "SLUICE_IDLE_TIMEOUT_S": f"{60 * dilation:g}",
    }


def workloads(
    args: argparse.Namespace, capacity: float, samples: list[Any], *, dilation: float
) -> Iterator[tuple[float, list[Planned], float]]:
    """Per load: its multiple, the planned requests (times on the run's clock), and the
    span of arrivals in the modelled GPUs' seconds."""
    gaps = azure_gaps()
    for load in args.loads:
        rate = load * capacity / dilation
        items = scorpio_load(
            samples, gaps, args.requests, rate, load=load, max_tokens=args.max_tokens
        )
        yield load, items, items[-1].at / dilation


def progress(where: str, name: str, summary: dict[str, Any]) -> None:
    print(
        f"{where} {name}: goodput {summary['goodput_rps']:.1f} req/s, "
        f"attainment {summary['attainment_offered']:.3f} offered / "
        f"{summary['attainment_admitted'] or 0:.3f} admitted, rejected "
        f"{summary['rejection_rate']:.3f}, failed {summary['failed']} ({summary['wall_s']} s)",
        flush=True,
    )


def run_config(
    items: list[Planned],
    spec: dict[str, Any],
    span: float,
    lengths: LengthModel,
    *,
    backends: int,
    instances: dict[str, tuple[str, int]] | None = None,
    profile: str = "llama8b-h100",
    slo_scale: float = 1.0,
) -> dict[str, Any]:
    """One configuration (``scheduler`` settings and ``max_in_flight``) in virtual time on
    servers of ``profile`` (the latency models starting from its own figures), SCORPIO's
    classes times ``slo_scale``, summarized, with the wall time it took."""
    started = time.monotonic()
    engine = get_profile(profile)
    outcome = run_virtual(
        items,
        profile=engine,
        backends=backends,
        scheduler=SchedulerConfig.model_validate(spec["scheduler"]),
        max_in_flight=spec["max_in_flight"],
        prior=LatencyPrior() if profile == "llama8b-h100" else prior_for(engine),
        lengths=lengths,
        instances=instances,
        slo_scale=slo_scale,
    )
    classes = {k: (t * slo_scale, p * slo_scale) for k, (t, p) in SCORPIO_CLASSES.items()}
    summary = summarize(outcome, 1.0, span, classes)
    summary["wall_s"] = round(time.monotonic() - started, 1)
    return summary


def prior_for(profile: Profile) -> LatencyPrior:
    """The latency prior that matches an engine profile's step model: prefill beta0 +
    beta1 * tokens, ITL beta0 + beta2 * B + beta3 * B * L (microseconds to ms)."""
    ms = 1 / 1000
    theta = 512
    return LatencyPrior(
        prefill_phi_ms=(profile.beta0_us + profile.beta1_us * theta) * ms,
        prefill_theta_tokens=theta,
        prefill_alpha_ms=profile.beta1_us * ms,
        prefill_beta_ms=profile.beta0_us * ms,
        itl_a_ms=profile.beta3_us * ms,
        itl_b_ms=profile.beta2_us * ms,
        itl_c_ms=0.0,
        itl_d_ms=profile.beta0_us * ms,
    )


DECODE_PROFILE = "llama70b-h100-tp4"
DECODE_SLO_SCALE = 2.0  # SCORPIO's classes doubled for a 70B-class model (ALGORITHMS.md §1)
DECODE_MIN_PROMPT = 800  # long contexts, so that ITL at full batch passes the tight target
DECODE_CONFIGS = ("iv_full", "v_full_no_credits", "vi_arrival")


def run_decode_bound(args: argparse.Namespace) -> dict[str, Any]:
    """(iv) against (v), and (vi), where decode speed binds: the 70B/TP4 profile, classes
    doubled, long prompts."""
    samples = [s for s in load_sharegpt() if DECODE_MIN_PROMPT <= s.prompt_tokens < 6000]
    engine = get_profile(DECODE_PROFILE)
    per_backend = capacity_per_backend(samples, args.max_tokens, DECODE_PROFILE)
    capacity = per_backend * BACKENDS
    lengths = artifact.load().model
    mean_context = sum(s.prompt_tokens + min(s.output_tokens, args.max_tokens) / 2 for s in samples)
    mean_context /= len(samples)
    full = engine.max_num_seqs
    itl_full_ms = 1000 * engine.step_seconds(0, full, round(full * mean_context))
    tight_ms = DECODE_SLO_SCALE * min(p for _, p in SCORPIO_CLASSES.values())
    print(
        f"decode-bound: {DECODE_PROFILE}, capacity {capacity:.1f} req/s, ITL at {full} "
        f"sequences {itl_full_ms:.1f} ms against the tight {tight_ms:g} ms",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    gaps = azure_gaps()
    for load in args.decode_loads:
        items = scorpio_load(
            samples,
            gaps,
            args.decode_requests,
            load * capacity,
            load=load,
            max_tokens=args.max_tokens,
        )
        span = items[-1].at
        for name in DECODE_CONFIGS:
            summary = run_config(
                items,
                CONFIGS[name],
                span,
                lengths,
                backends=BACKENDS,
                profile=DECODE_PROFILE,
                slo_scale=DECODE_SLO_SCALE,
            )
            results.setdefault(f"{load:g}", {})[name] = summary
            progress(f"decode-bound {load:g}x", name, summary)
    return {
        "profile": DECODE_PROFILE,
        "slo_scale": DECODE_SLO_SCALE,
        "min_prompt_tokens": DECODE_MIN_PROMPT,
        "requests_per_run": args.decode_requests,
        "capacity_rps": capacity,
        "mean_context_tokens": mean_context,
        "itl_at_full_batch_ms": itl_full_ms,
        "full_batch": full,
        "tight_tpot_ms": tight_ms,
        "results": results,
    }


def run_virtual_ablation(args: argparse.Namespace) -> dict[str, Any]:
    samples = [s for s in load_sharegpt() if s.prompt_tokens < 6000]
    per_backend = capacity_per_backend(samples, args.max_tokens)
    capacity = per_backend * BACKENDS
    lengths = artifact.load().model
    print(f"capacity: {per_backend:.1f} req/s per server, {capacity:.1f} for the fleet", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for load, items, span in workloads(args, capacity, samples, dilation=1.0):
        for name in args.configs:
            summary = run_config(items, CONFIGS[name], span, lengths, backends=BACKENDS)
            results.setdefault(f"{load:g}", {})[name] = summary
            progress(f"load {load:g}x", name, summary)
    return {
        "benchmark": "slo_guards",
        "mode": "virtual time (gateway scheduling code + engine model)",
        "backends": BACKENDS,
        "profile": "llama8b-h100",
        "dilation": 1.0,
        "requests_per_run": args.requests,
        "max_tokens": args.max_tokens,
        "capacity_rps": capacity,
        "overrun_share": SchedulerConfig().overrun_share,
        "results": results,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    samples = [s for s in load_sharegpt() if s.prompt_tokens < 6000]
    per_backend = capacity_per_backend(samples, args.max_tokens)
    capacity = per_backend * BACKENDS
    print(f"capacity: {per_backend:.1f} req/s per server, {capacity:.1f} for the fleet", flush=True)
    results: dict[str, dict[str, Any]] = {}
    sim_args = [
        "--servers",
        str(BACKENDS),
        "--model",
        MODEL,
        "--slowdown",
        str(args.dilation),
        "--seed",
        "7",
    ]
    for load, items, span in workloads(args, capacity, samples, dilation=args.dilation):
        for name in args.configs:
            started = time.monotonic()
            async with sim_fleet(sim_args) as urls:
                with tempfile.TemporaryDirectory() as workdir:
                    config = gateway_config(urls, name, args.dilation)
                    env = dilated_env(args.dilation)
                    async with gateway(config, Path(workdir), env=env) as url:
                        outcome = await run_open_loop(url, MODEL, items)
            summary = summarize(outcome, args.dilation, span)
            summary["wall_s"] = round(time.monotonic() - started, 1)
            results.setdefault(f"{load:g}", {})[name] = summary
            progress(f"load {load:g}x", name, summary)
    return {
        "benchmark": "slo_guards",
        "mode": f"over HTTP, time dilated {args.dilation:g}x",
        "backends": BACKENDS,
        "profile": "llama8b-h100",
        "dilation": args.dilation,
        "requests_per_run": args.requests,
        "max_tokens": args.max_tokens,
        "capacity_rps": capacity,
        "results": results,
    }


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def result_cells(row: dict[str, Any], ratio: float | None) -> str:
    """The cells every report's results table starts with, after load and label: goodput,
    its ratio to the baseline, attainment over offered and admitted, p99 TTFT and TPOT."""
    return (
        f"{row['goodput_rps']:.2f} | {_fmt(ratio, '.2f')} | "
        f"{row['attainment_offered']:.3f} | {_fmt(row['attainment_admitted'], '.3f')} | "
        f"{_fmt(row['ttft_p99_ms'], '.0f')} | {_fmt(row['tpot_p99_ms'], '.1f')}"
    )


def result_rows(
    results: dict[str, Any],
    labels: dict[str, str],
    base: str,
    tail: Callable[[dict[str, Any]], str],
) -> list[str]:
    """One table row per load and configuration: its label, the cells common to the results
    tables, its goodput as a ratio to ``base``'s at that load, then ``tail``'s cells."""
    rows = []
    for load, runs in results.items():
        reference = runs.get(base, {}).get("goodput_rps")
        for name, row in runs.items():
            ratio = row["goodput_rps"] / reference if reference else None
            rows.append(f"| {load}x | {labels[name]} | {result_cells(row, ratio)} | {tail(row)} |")
    return rows


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# SLO guards: goodput and attainment, with ablation",
        "",
        f"Mode: {data['mode']}. "
        f"{data['backends']} simulated Llama-3.1-8B/H100 servers; fleet capacity "
        f"{data['capacity_rps']:.1f} req/s for this mix (engine model, saturated). "
        f"{data['requests_per_run']} requests per run: Azure conversation-trace arrivals "
        "rescaled to each load, ShareGPT prompts with their real reply lengths (capped at "
        f"{data['max_tokens']} tokens), SCORPIO's six SLO classes drawn uniformly. Latencies in ms "
        "of the modelled GPUs' time; time-to-reject is measured on the same clock.",
        "",
        "![guards](guards.png)",
        "",
        "| load | config | goodput req/s | ratio to (i) | attain. offered | attain. admitted "
        f"| p99 TTFT ms | p99 TPOT ms | rejected | rejected within {FAST_REJECT_MS:g} ms "
        "| reject p50 / p90 / p99 ms | refused late |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += result_rows(
        data["results"],
        LABELS,
        "i_least_loaded",
        lambda row: (
            f"{row['rejection_rate']:.2f} | {_fmt(row.get('rejected_fast_share'), '.3f')} | "
            f"{_fmt(row['time_to_reject_p50_ms'], '.1f')} / "
            f"{_fmt(row.get('time_to_reject_p90_ms'), '.1f')} / "
            f"{_fmt(row['time_to_reject_p99_ms'], '.1f')} | {row.get('late_rejections', 0)}"
        ),
    )
    lines += [
        "",
        "(vi) commits at arrival: a request is admitted only if it and every request already "
        "admitted still fit their budgets (an EDF walk over the predicted prefill and "
        "decode-slot times, counting a reply that outlived its predicted length as going on "
        f"for {data.get('overrun_share', 0.25):g} again of what it produced), and an admitted "
        "request is refused later (*refused late*, reason `ttft_late`) only when it can no "
        "longer meet its deadline. The other configurations refuse at the deadline: every "
        "pass re-decides the whole queue.",
    ]
    return "\n".join(lines) + "\n\n" + decode_section(data) + targets(data)


def decode_section(data: dict[str, Any]) -> str:
    """Where decode speed binds: (iv) against (v) and (vi), with what the run shows of it."""
    block = data.get("decode_bound")
    if block is None:
        return ""
    binds = block["itl_at_full_batch_ms"] > block["tight_tpot_ms"]
    lines = [
        "## Where decode speed binds",
        "",
        f"{BACKENDS} simulated servers of the {block['profile']} profile, SCORPIO's classes "
        f"times {block['slo_scale']:g}, ShareGPT prompts of at least "
        f"{block['min_prompt_tokens']} tokens (mean context {block['mean_context_tokens']:.0f} "
        f"tokens), {block['requests_per_run']} requests per run, fleet capacity "
        f"{block['capacity_rps']:.1f} req/s. The engine's ITL at {block['full_batch']} "
        f"sequences of that context is {block['itl_at_full_batch_ms']:.1f} ms against the "
        f"tightest TPOT target of {block['tight_tpot_ms']:g} ms: decode speed "
        f"{'binds' if binds else 'does not bind'} here.",
        "",
        "| load | config | goodput req/s | ratio to (iv) | attain. offered | attain. admitted "
        "| p99 TTFT ms | p99 TPOT ms | rejected | rejected for TPOT |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    effects = []
    for load, runs in block["results"].items():
        base = runs.get("iv_full", {}).get("goodput_rps")
        for name, row in runs.items():
            ratio = row["goodput_rps"] / base if base else None
            tpot = row["reject_reasons"].get("tpot_unattainable", 0)
            lines.append(
                f"| {load}x | {LABELS[name]} | {result_cells(row, ratio)} | "
                f"{row['rejection_rate']:.2f} | {tpot} |"
            )
        without = runs.get("v_full_no_credits", {}).get("goodput_rps")
        if base and without:
            effects.append((load, base / without))
    if effects:
        words = ", ".join(f"{ratio:.3f}x at {load}x" for load, ratio in effects)
        small = all(abs(ratio - 1) < 0.01 for _, ratio in effects)
        worst_load, worst = min(effects, key=lambda e: e[1])
        best_load, best = max(effects, key=lambda e: e[1])
        if small:
            verdict = "within 1% at every load: credits change nothing measurable here."
        elif worst < 0.99 and best <= 1.01:
            verdict = (
                f"credits cost goodput here, most at {worst_load}x ({100 * (1 - worst):.0f}%)."
            )
        elif best > 1.01 and worst >= 0.99:
            verdict = f"credits add goodput here, most at {best_load}x ({100 * (best - 1):.0f}%)."
        else:
            verdict = "credits add goodput at some loads and cost it at others."
        lines += ["", f"Credits: goodput of (iv) over (v) is {words}; {verdict}"]
    return "\n".join(lines) + "\n\n"


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def targets(data: dict[str, Any]) -> str:
    """The issues' targets against this run's numbers: every figure and verdict computed
    here, from the same run."""
    rows = []
    for load in ("1.5", "2"):
        runs = data["results"].get(load)
        if not runs:
            continue
        full, base = runs.get("iv_full"), runs.get("i_least_loaded")
        if full is not None and base is not None:
            ratio = full["goodput_rps"] / base["goodput_rps"]
            rows.append(
                f"| {load}x: goodput of (iv) >= 2x (i) | {ratio:.2f}x | {_verdict(ratio >= 2)} |"
            )
            admitted = full["attainment_admitted"] or 0.0
            rows.append(
                f"| {load}x: >= 95% of admitted requests meet both targets, (iv) | "
                f"{100 * admitted:.1f}% | {_verdict(admitted >= 0.95)} |"
            )
        arrival = runs.get("vi_arrival")
        if arrival is None or full is None:
            continue
        fast = arrival.get("rejected_fast_share")
        if fast is not None:
            rows.append(
                f"| {load}x: >= 90% of refusals within {FAST_REJECT_MS:g} ms of arrival, (vi) "
                f"| {100 * fast:.1f}% ((iv): "
                f"{100 * (full.get('rejected_fast_share') or 0):.1f}%) | {_verdict(fast >= 0.9)} |"
            )
        kept = arrival["goodput_rps"] / full["goodput_rps"]
        rows.append(
            f"| {load}x: goodput of (vi) >= 97% of (iv) | {100 * kept:.1f}% | "
            f"{_verdict(kept >= 0.97)} |"
        )
        admitted = arrival["attainment_admitted"] or 0.0
        rows.append(
            f"| {load}x: >= 99% of admitted requests meet both targets, (vi) | "
            f"{100 * admitted:.1f}% | {_verdict(admitted >= 0.99)} |"
        )
        late = arrival.get("late_share_of_admitted") or 0.0
        rows.append(
            f"| {load}x: late refusals <= 1% of admitted, (vi) | {100 * late:.2f}% "
            f"({arrival.get('late_rejections', 0)}) | {_verdict(late <= 0.01)} |"
        )
    return "\n".join(
        ["## Targets against results", "", "| target | result | |", "|---|---|---|", *rows, ""]
    )


def plot_by_load(results: dict[str, Any], labels: dict[str, str], path: Path) -> None:
    """Goodput and attainment (over offered, over admitted) against load, one line per
    configuration or system; ``results`` maps load -> name -> summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = list(results)
    names = list(next(iter(results.values())))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in names:
        xs = [float(x) for x in loads if name in results[x]]
        rows = [results[x][name] for x in loads if name in results[x]]
        axes[0].plot(xs, [r["goodput_rps"] for r in rows], "o-", label=labels[name])
        axes[1].plot(xs, [r["attainment_offered"] for r in rows], "o-", label=labels[name])
        axes[2].plot(xs, [r["attainment_admitted"] or 0 for r in rows], "o-", label=labels[name])
    for ax, title in zip(
        axes,
        ("goodput (req/s)", "attainment over offered", "attainment over admitted"),
        strict=True,
    ):
        ax.set_xlabel("load (x fleet capacity)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot(data: dict[str, Any], path: Path) -> None:
    plot_by_load(data["results"], LABELS, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--http", action="store_true", help="over real sockets, time dilated")
    parser.add_argument("--dilation", type=float, default=20.0)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, default=REPORTS)
    parser.add_argument(
        "--part",
        choices=["all", "ablation", "decode"],
        default="all",
        help="virtual mode: the ablation, the decode-bound scenario (kept beside the saved "
        "ablation in guards.json), or both",
    )
    parser.add_argument("--decode-loads", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    parser.add_argument("--decode-requests", type=int, default=4000)
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from the saved guards.json"
    )
    args = parser.parse_args()
    saved = args.out / "guards.json"
    if args.report_only:
        data = json.loads(saved.read_text())
    elif args.http:
        data = asyncio.run(run(args))
    elif args.part == "decode":
        data = json.loads(saved.read_text())
        data["decode_bound"] = run_decode_bound(args)
    else:
        data = run_virtual_ablation(args)
        if args.part == "all":
            data["decode_bound"] = run_decode_bound(args)
    publish(args.out, "guards", data, markdown(data), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
