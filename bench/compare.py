"""Sluice side by side with vllm-router, SMG, LiteLLM and direct round-robin (issue 8).

    python -m bench.compare run goodput|bursts|overhead|all [--systems ...]
    python -m bench.compare report        # rewrite the report from the saved JSON

Same simulated fleet, trace and seed for every system, in one run; each scenario's results
are kept in bench/reports/compare.json, so scenarios can be run one at a time, and the report
(compare.md, compare_goodput.png, compare_cdf.png) is written from all of them.

goodput  4 simulated Llama-3.1-8B/H100 servers, each run as vLLM with --max-num-seqs 32 (so
         that overload builds within the few hundred requests a run can afford here; Sluice's
         per-backend bound is set to the same 32); Azure conversation arrivals at 0.5x-2x the
         fleet's capacity for that setting; ShareGPT prompts with their real reply lengths;
         SCORPIO's six SLO classes. Over real sockets, time-dilated ``--dilation`` times
         (engine steps and SLOs alike), so that this 2-core machine can stream every token
         through every gateway; results are reported in the modelled GPUs' time.
bursts   the same, with arrivals from the Azure code trace (bursty) at ``--burst-load``.
overhead one simulated server with no modelled compute; each system pinned to one core (the
         client and server on the other); added latency against direct at a fixed rate,
         streamed and not; then the highest rate each sustains, closed loop.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.data import load_sharegpt
from bench.guards import BACKENDS, gateway_config, plot_by_load, progress, summarize
from bench.guards import dilated_env as sluice_env
from bench.peers import LABELS, SYSTEMS, Fleet, client_headers, running
from bench.procs import sim_fleet
from bench.publish import REPORTS, publish
from bench.sim.profiles import get_profile
from bench.sim.virtual import Arrival, simulate
from bench.stats import percentile
from bench.workload import azure_gaps, run_open_loop, scorpio_load

MODEL = "sim-llama-8b"
SAVED = "compare.json"


# --- scenarios (a) and (b): goodput under trace-driven load ------------------------------


def _cdf_points(values: list[float], points: int = 60) -> list[float]:
    """Quantiles 0..100 of ``values``: enough to draw a CDF."""
    if not values:
        return []
    return [percentile(values, 100 * i / (points - 1)) or 0.0 for i in range(points)]


def _progress(label: str) -> Any:
    started = time.monotonic()
    last = [0.0]

    def show(sent: int, total: int) -> None:
        now = time.monotonic()
        if sent == total or now - last[0] > 15:
            last[0] = now
            print(f"  {label}: {sent}/{total} sent, {now - started:.0f} s", flush=True)

    return show


def fleet_capacity(samples: list[Any], max_num_seqs: int, max_tokens: int) -> float:
    """Requests/s the fleet completes when saturated by this mix (engine model, modelled
    time), with the servers' ``max_num_seqs``."""
    profile = dataclasses.replace(get_profile("llama8b-h100"), max_num_seqs=max_num_seqs)
    arrivals = [
        Arrival(i / 200.0, s.prompt_tokens, min(s.output_tokens, max_tokens))
        for i, s in enumerate(samples[:4000])
    ]
    finishes = sorted(r.finished_at or 0.0 for r in simulate(profile, arrivals))
    lo, hi = len(finishes) // 4, 3 * len(finishes) // 4
    return BACKENDS * (hi - lo) / (finishes[hi] - finishes[lo])


def sluice_config(urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Full guards, with each backend's bound at its engine's ``max_num_seqs`` (what an
    operator sets), the SLOs and latency prior dilated like the servers."""
    config = gateway_config(urls, "iv_full", args.dilation)
    for backend in config["backends"]:
        backend["max_in_flight"] = args.max_num_seqs
    return config


async def _trace_run(
    system: str, items: list[Any], span: float, args: argparse.Namespace
) -> dict[str, Any]:
    sim_args = ["--servers", str(BACKENDS), "--model", MODEL, "--slowdown", str(args.dilation)]
    sim_args += ["--max-num-seqs", str(args.max_num_seqs), "--seed", "7"]
    started = time.monotonic()
    async with sim_fleet(sim_args) as urls:
        with tempfile.TemporaryDirectory() as work:
            config = sluice_config(urls, args)
            async with running(
                system,
                Fleet(urls, MODEL),
                Path(work),
                sluice_config=config,
                sluice_env=sluice_env(args.dilation),
            ) as to:
                results = await run_open_loop(
                    to, MODEL, items, client_headers(), _progress(LABELS[system])
                )
    summary = summarize(results, args.dilation, span)
    summary["wall_s"] = round(time.monotonic() - started, 1)
    summary["ttft_cdf_ms"] = _cdf_points(
        [1000 * r.ttft_s / args.dilation for r in results if r.ttft_s is not None]
    )
    summary["tpot_cdf_ms"] = _cdf_points(
        [1000 * r.tpot_s / args.dilation for r in results if r.tpot_s is not None]
    )
    return summary


async def run_traces(args: argparse.Namespace, scenario: str) -> dict[str, Any]:
    samples = [s for s in load_sharegpt() if s.prompt_tokens < 6000]
    capacity = fleet_capacity(samples, args.max_num_seqs, args.max_tokens)
    trace = "azure2023_conv.csv" if scenario == "goodput" else "azure2023_code.csv"
    loads = args.loads if scenario == "goodput" else [args.burst_load]
    gaps = azure_gaps(trace)
    print(f"{scenario}: fleet capacity {capacity:.1f} req/s (modelled time)", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for load in loads:
        count = round(load * capacity * args.span)
        rate = load * capacity / args.dilation
        items = scorpio_load(samples, gaps, count, rate, load=load, max_tokens=args.max_tokens)
        span = items[-1].at / args.dilation
        for system in args.systems:
            summary = await _trace_run(system, items, span, args)
            results.setdefault(f"{load:g}", {})[system] = summary
            progress(f"{scenario} {load:g}x", LABELS[system], summary)
    return {
        "trace": trace,
        "capacity_rps": capacity,
        "max_num_seqs": args.max_num_seqs,
        "dilation": args.dilation,
        "span_s": args.span,
        "results": results,
    }


# --- scenario (c): overhead --------------------------------------------------------------


async def _one(http: aiohttp.ClientSession, url: str, stream: bool) -> tuple[float, bool]:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 16, "ignore_eos": True, "stream": stream}
    start = time.perf_counter()
    async with http.post(url + "/v1/completions", json=body, headers=client_headers()) as r:
        await r.read()
        return time.perf_counter() - start, r.status == 200


async def _fixed_rate(urls: list[str], rate: float, seconds: float, stream: bool) -> dict[str, Any]:
    """Open loop: one request every 1/rate s; latency of each."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        start = time.monotonic()
        tasks = []
        for n in range(int(rate * seconds)):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(http, urls[n % len(urls)], stream)))
        done = await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
    latencies = [t for t, ok in done if ok]
    return {
        "sent": len(done),
        "errors": sum(not ok for _, ok in done),
        "achieved_rps": len(done) / elapsed,
        "p50_ms": 1000 * (percentile(latencies, 50) or 0.0),
        "p99_ms": 1000 * (percentile(latencies, 99) or 0.0),
    }


async def _closed_loop(urls: list[str], concurrency: int, seconds: float) -> float:
    """Requests/s completed with ``concurrency`` requests always outstanding."""
    done = 0
    stop = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker(url: str) -> None:
            nonlocal done
            while time.monotonic() < stop:
                _, ok = await _one(http, url, False)
                done += ok

        await asyncio.gather(*(worker(urls[i % len(urls)]) for i in range(concurrency)))
    return done / seconds


def _overhead_config(urls: list[str]) -> dict[str, Any]:
    return {
        "backends": [
            {"name": f"b{i}", "url": url, "max_in_flight": 4096} for i, url in enumerate(urls)
        ]
    }


async def run_overhead(args: argparse.Namespace) -> dict[str, Any]:
    cores = sorted(os.sched_getaffinity(0))
    system_core, other = str(cores[0]), {cores[-1]}
    os.sched_setaffinity(0, other)  # the client shares a core with the server, not the system
    results: dict[str, Any] = {}
    # Two servers: power-of-two routing needs a choice.
    sim_args = ["--servers", "2", "--profile", "instant", "--model", MODEL]
    async with sim_fleet(sim_args, prefix=["taskset", "-c", str(cores[-1])]) as urls:
        for system in args.systems:
            with tempfile.TemporaryDirectory() as work:
                async with running(
                    system,
                    Fleet(urls, MODEL),
                    Path(work),
                    sluice_config=_overhead_config(urls),
                    pin=system_core,
                ) as to:
                    await _fixed_rate(to, 50, 2, False)  # warm up
                    row = {
                        "plain": await _fixed_rate(to, args.rate, args.seconds, False),
                        "stream": await _fixed_rate(to, args.rate, args.seconds, True),
                        "max_rps": await _closed_loop(to, 64, args.seconds),
                    }
            results[system] = row
            print(f"overhead {LABELS[system]}: {json.dumps(row)}", flush=True)
    return {"rate": args.rate, "seconds": args.seconds, "results": results}


# --- the report --------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _best_peer(rows: dict[str, Any], key: str) -> tuple[str | None, float]:
    peers = {n: r[key] for n, r in rows.items() if n not in ("sluice", "direct")}
    if not peers:
        return None, 0.0
    name = max(peers, key=lambda n: peers[n])
    return name, peers[name]


def _trace_table(block: dict[str, Any]) -> list[str]:
    lines = [
        "| load | system | goodput req/s | vs best peer | attainment (offered) | "
        "attainment (admitted) | rejected | failed | p99 TTFT ms | p99 TPOT ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for load, rows in block["results"].items():
        _, best = _best_peer(rows, "goodput_rps")
        for name, r in rows.items():
            ratio = r["goodput_rps"] / best if best else None
            lines.append(
                f"| {load}x | {LABELS[name]} | {r['goodput_rps']:.1f} | {_fmt(ratio, '.2f')}x | "
                f"{r['attainment_offered']:.3f} | {_fmt(r['attainment_admitted'], '.3f')} | "
                f"{r['rejection_rate']:.3f} | {r['failed']} | {_fmt(r['ttft_p99_ms'], '.0f')} | "
                f"{_fmt(r['tpot_p99_ms'], '.1f')} |"
            )
    return lines


def _overhead_table(block: dict[str, Any]) -> list[str]:
    rows = block["results"]
    direct = rows.get("direct")
    lines = [
        f"Fixed rate {block['rate']:g} req/s for {block['seconds']:g} s per mode, 16-token "
        "replies; added = the system's latency percentile minus direct's, same run.",
        "",
        "| system | added p50 ms | added p99 ms | added p50 ms, streamed | added p99 ms, "
        "streamed | errors | highest rate on one core (req/s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def added(name: str, row: dict[str, Any], mode: str, q: str) -> str:
        if name == "direct":
            return "-"
        if direct is None:
            return _fmt(row[mode][q])
        return _fmt(row[mode][q] - direct[mode][q], ".2f")

    for name, row in rows.items():
        lines.append(
            f"| {LABELS[name]} | {added(name, row, 'plain', 'p50_ms')} | "
            f"{added(name, row, 'plain', 'p99_ms')} | {added(name, row, 'stream', 'p50_ms')} | "
            f"{added(name, row, 'stream', 'p99_ms')} | "
            f"{row['plain']['errors'] + row['stream']['errors']} | "
            f"{'-' if name == 'direct' else format(row['max_rps'], '.0f')} |"
        )
    if direct is not None:
        lines += [
            "",
            f"Direct: p50 {direct['plain']['p50_ms']:.2f} ms, p99 {direct['plain']['p99_ms']:.2f} "
            f"ms (streamed {direct['stream']['p50_ms']:.2f} / {direct['stream']['p99_ms']:.2f}).",
        ]
    return lines


def _targets(data: dict[str, Any]) -> list[str]:
    """Issue 8's targets against what this report measured."""
    lines = ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    rows = data.get("goodput", {}).get("results", {}).get("1.5", {})
    if "sluice" in rows:
        peer, best = _best_peer(rows, "goodput_rps")
        ratio = rows["sluice"]["goodput_rps"] / best if best else 0.0
        admitted = rows["sluice"]["attainment_admitted"] or 0.0
        lines += [
            f"| goodput at 1.5x ≥ 2x the best peer's | {ratio:.2f}x ({LABELS.get(peer or '', '-')})"
            f" | {'met' if ratio >= 2 else 'missed'} |",
            f"| ≥ 95% of admitted requests meet both targets at 1.5x | {100 * admitted:.1f}% | "
            f"{'met' if admitted >= 0.95 else 'missed'} |",
        ]
    overhead = data.get("overhead", {}).get("results", {})
    if "sluice" in overhead and "direct" in overhead:

        def added(system: str, stat: str) -> float:
            plain = overhead[system]["plain"]
            return float(plain[stat] - overhead["direct"]["plain"][stat])

        p50, p99 = added("sluice", "p50_ms"), added("sluice", "p99_ms")
        rate = data["overhead"]["rate"]
        lines += [
            f"| added p50 ≤ 1 ms at {rate:g} req/s (not streamed) | {p50:.2f} ms | "
            f"{'met' if p50 <= 1 else 'missed'} |",
            f"| added p99 ≤ 5 ms at {rate:g} req/s (not streamed) | {p99:.2f} ms | "
            f"{'met' if p99 <= 5 else 'missed'} |",
        ]
        for peer, bound in (
            ("litellm-least-busy", 1.0),
            ("vllm-router-rr", 3.0),
            ("vllm-router-p2", 3.0),
        ):
            if peer not in overhead:
                continue
            name = LABELS.get(peer, peer)
            wanted = "below" if bound == 1.0 else f"within {bound:g}x of"
            for stat in ("p50_ms", "p99_ms"):
                theirs = added(peer, stat)
                ours = added("sluice", stat)
                ok = ours < theirs if bound == 1.0 else ours <= bound * max(theirs, 0.0)
                lines.append(
                    f"| added {stat[:3]} {wanted} {name}'s | {ours:.2f} against {theirs:.2f} ms |"
                    f" {'met' if ok else 'missed'} |"
                )
    return [*lines, ""]


def markdown(data: dict[str, Any]) -> str:
    lines = ["# Sluice against vllm-router, SMG and LiteLLM", ""]
    lines += [__doc__.split("\n\n", 2)[2].strip(), ""] if __doc__ else []
    lines += _targets(data)
    if "goodput" in data:
        block = data["goodput"]
        lines += [
            "## Goodput (Azure conversation trace)",
            "",
            f"Fleet capacity {block['capacity_rps']:.0f} req/s in modelled time (servers at "
            f"--max-num-seqs {block['max_num_seqs']}); {block['span_s']:g} modelled seconds of "
            f"arrivals per run; time dilated {block['dilation']:g}x. Goodput = requests "
            "meeting both targets per modelled second of arrivals; a rejected request counts "
            "as not good.",
            "",
            *_trace_table(block),
            "",
            *[f"- {note}" for note in block.get("notes", [])],
            "",
            "![goodput](compare_goodput.png)",
            "",
            "![latency CDFs](compare_cdf.png)",
            "",
        ]
    if "bursts" in data:
        lines += ["## Bursts (Azure code trace)", "", *_trace_table(data["bursts"]), ""]
    if "overhead" in data:
        notes = [f"- {note}" for note in data["overhead"].get("notes", [])]
        lines += ["## Overhead", "", *_overhead_table(data["overhead"]), "", *notes, ""]
    if "third_party" in data:
        lines += ["## A third-party load generator", "", *_third_party_table(data["third_party"])]
    return "\n".join(lines)


def _third_party_table(block: dict[str, Any]) -> list[str]:
    lines = [
        f"{block['tool']}, Poisson arrivals at {block['rate_rps']:g} req/s (modelled), "
        f"{block['prompts']} prompts, same fleet as the goodput scenario, time dilated "
        f"{block['dilation']:g}x; its own goodput with TTFT ≤ 7.5 s and TPOT ≤ 50 ms (modelled). "
        "Run with `python -m bench.third_party`.",
        "",
        "| system | completed | failed | req/s | goodput req/s | p50 TTFT ms | p99 TTFT ms | "
        "p50 TPOT ms | p99 TPOT ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in block["results"].items():
        lines.append(
            f"| {LABELS[name]} | {r['completed']} | {r['failed']} | "
            f"{r['request_throughput']:.1f} | {r['request_goodput']:.1f} | "
            f"{r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | {r['tpot_p50_ms']:.1f} | "
            f"{r['tpot_p99_ms']:.1f} |"
        )
    return [*lines, ""]


def plot(data: dict[str, Any], path: Path) -> None:
    if "goodput" not in data:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["goodput"]["results"]
    plot_by_load(results, LABELS, path.with_name("compare_goodput.png"))

    load = "1.5" if "1.5" in results else list(results)[-1]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, row in results[load].items():
        qs = [i / (len(row["ttft_cdf_ms"]) - 1) for i in range(len(row["ttft_cdf_ms"]))]
        axes[0].plot(row["ttft_cdf_ms"], qs, label=LABELS[name])
        qs = [i / max(1, len(row["tpot_cdf_ms"]) - 1) for i in range(len(row["tpot_cdf_ms"]))]
        axes[1].plot(row["tpot_cdf_ms"], qs, label=LABELS[name])
    axes[0].set_xscale("log")
    axes[0].set_title(f"TTFT of served requests at {load}x (ms, modelled)")
    axes[1].set_title(f"TPOT of served requests at {load}x (ms, modelled)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylabel("fraction")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path.with_name("compare_cdf.png"), dpi=100)
    plt.close(fig)


def load_saved(out: Path) -> dict[str, Any]:
    path = out / SAVED
    return json.loads(path.read_text()) if path.exists() else {}


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A run of some systems replaces those systems' rows and keeps the others'."""
    merged = dict(old)
    for key, value in new.items():
        if key != "results" or "results" not in old:
            merged[key] = value
            continue
        results = dict(old["results"])
        for load, rows in value.items():
            if isinstance(rows, dict) and "plain" not in rows:  # load -> system -> row
                results[load] = {**results.get(load, {}), **rows}
            else:
                results[load] = rows
        merged["results"] = results
    return merged


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data = load_saved(args.out)
    scenarios = ["goodput", "bursts", "overhead"] if args.scenario == "all" else [args.scenario]
    for scenario in scenarios:
        started = time.monotonic()
        if scenario == "overhead":
            block = await run_overhead(args)
        else:
            block = await run_traces(args, scenario)
        block["wall_s"] = round(time.monotonic() - started)
        data[scenario] = merge(data.get(scenario, {}), block)
        publish(args.out, "compare", data, markdown(data), plot)
    return data


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="run a scenario and rewrite the report")
    run_cmd.add_argument("scenario", choices=["goodput", "bursts", "overhead", "all"])
    run_cmd.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    run_cmd.add_argument("--loads", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0])
    run_cmd.add_argument("--burst-load", type=float, default=1.0)
    run_cmd.add_argument(
        "--span", type=float, default=6.0, help="modelled seconds of arrivals per run"
    )
    run_cmd.add_argument("--dilation", type=float, default=8.0)
    run_cmd.add_argument(
        "--max-num-seqs", type=int, default=32, help="each server's vLLM --max-num-seqs"
    )
    run_cmd.add_argument("--max-tokens", type=int, default=512)
    run_cmd.add_argument("--rate", type=float, default=200.0, help="overhead: requests/s")
    run_cmd.add_argument("--seconds", type=float, default=8.0, help="overhead: per mode")
    report = commands.add_parser("report", help="rewrite the report from the saved JSON")
    for sub in (run_cmd, report):
        sub.add_argument("--out", type=Path, default=REPORTS)
    args = parser.parse_args()
    if args.command == "report":
        data = load_saved(args.out)
        publish(args.out, "compare", data, markdown(data), plot)
        return 0
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
