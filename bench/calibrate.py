"""Calibration of the simulator's 8B-on-H100 profile against published figures.

Three views, each computed by the engine model in virtual time (exact, noise-free of the
event loop), plus an HTTP spot check of the real-time servers:
  1. inter-token latency and throughput against batch size (closed loop, 256 in / 256 out);
  2. time to first token against prompt length at batch 1;
  3. TTFT and ITL against offered load (Poisson arrivals, ShareGPT-like lengths).
Writes ``bench/reports/sim_calibration.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import sim_fleet
from bench.publish import REPORTS, publish
from bench.sim.profiles import Profile, get_profile
from bench.sim.virtual import Arrival, simulate
from bench.stats import gaps, percentile

PROFILE = "llama8b-h100"

# Published figures (see the report for sources).
PUBLISHED = {
    "batch1_ttft_256_ms": (60.0, 120.0),
    "batch1_itl_ms": (10.0, 15.0),
    "llmd_itl_ms": (12.0, 2.0),
    "llmd_prefill_ms": (30.0, 0.25),
    "lambda_tput": (3400.0, 20.0),
    "mlperf_tput": (5100.0, 5800.0),
}


def _itl(requests: list[Any]) -> list[float]:
    out: list[float] = []
    for r in requests:
        out.extend(gaps(r.token_times))
    return out


def closed_loop(
    profile: Profile, batch: int, prompt: int, output: int, rounds: int = 4
) -> dict[str, float]:
    """``batch`` clients, each sending its next request when the last one ends."""
    # In virtual time a closed loop is built from waves started at each finish; simpler and
    # equivalent for steady state: staggered arrivals keep ``batch`` requests in flight.
    arrivals: list[Arrival] = []
    period = profile.step_seconds(0, batch, batch * (prompt + output // 2)) * output
    for client in range(batch):
        offset = period * client / batch
        for k in range(rounds):
            arrivals.append(Arrival(offset + k * period * 1.02, prompt, output))
    done = simulate(profile, arrivals, seed=batch)
    steady = [r for r in done if r.arrival >= period]  # skip the ramp-up round
    itl = _itl(steady)
    tokens = sum(r.generated for r in steady)
    span = max(r.finished_at or 0 for r in steady) - min(r.arrival for r in steady)
    return {
        "batch": batch,
        "itl_mean_ms": 1000 * statistics.fmean(itl),
        "ttft_mean_ms": 1000
        * statistics.fmean((r.first_token_at or 0) - r.arrival for r in steady),
        "throughput_tok_s": tokens / span,
    }


def ttft_vs_prompt(profile: Profile, prompt: int) -> float:
    [r] = simulate(profile, [Arrival(0.0, prompt, 2)])
    return 1000 * (r.first_token_at or 0.0)


def load_sweep(profile: Profile, rate: float, seconds: float, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    arrivals: list[Arrival] = []
    t = 0.0
    while t < seconds:
        t += rng.expovariate(rate)
        prompt = max(4, min(4000, round(rng.lognormvariate(5.5, 1.0))))
        output = max(1, min(2000, round(rng.lognormvariate(4.8, 1.0))))
        arrivals.append(Arrival(t, prompt, output))
    done = simulate(profile, arrivals, seed=seed)
    ttfts = [(r.first_token_at or 0) - r.arrival for r in done]
    itl = _itl(done)
    horizon = max(r.finished_at or 0 for r in done)
    return {
        "rate": rate,
        "requests": len(done),
        "ttft_p50_ms": 1000 * (percentile(ttfts, 50) or 0),
        "ttft_p99_ms": 1000 * (percentile(ttfts, 99) or 0),
        "itl_p50_ms": 1000 * (percentile(itl, 50) or 0),
        "itl_p99_ms": 1000 * (percentile(itl, 99) or 0),
        "throughput_tok_s": sum(r.generated for r in done) / horizon,
        "preemptions": sum(r.preemptions for r in done),
    }


async def http_spot_check(batches: list[int], output: int) -> list[dict[str, float]]:
    """The real-time server over HTTP, streaming: what a client sees."""
    rows = []
    async with (
        sim_fleet(
            ["--servers", "1", "--profile", PROFILE, "--model", "m", "--lengths", "none"]
        ) as urls,
        aiohttp.ClientSession() as http,
    ):
        for batch in batches:
            results = await asyncio.gather(*(_stream(http, urls[0], output) for _ in range(batch)))
            rows.append(
                {
                    "batch": batch,
                    "ttft_mean_ms": 1000 * statistics.fmean(r[0] for r in results),
                    "itl_mean_ms": 1000 * statistics.fmean(x for r in results for x in r[1]),
                }
            )
    return rows


async def _stream(http: aiohttp.ClientSession, url: str, output: int) -> tuple[float, list[float]]:
    body = {
        "model": "m",
        "prompt": " ".join(["word"] * 256),
        "max_tokens": output,
        "ignore_eos": True,
        "stream": True,
    }
    start = time.perf_counter()
    times: list[float] = []
    async with http.post(url + "/v1/completions", json=body) as response:
        async for line in response.content:
            if line.startswith(b"data: {"):
                times.append(time.perf_counter())
    return times[0] - start, gaps(times)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def scale_check(servers: int = 16, seconds: float = 5.0) -> dict[str, float]:
    """CPU used by one simulator process hosting ``servers`` servers, idle and streaming."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.sim.cli",
        "--servers",
        str(servers),
        "--profile",
        PROFILE,
        "--model",
        "m",
        "--lengths",
        "none",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        urls = json.loads(await process.stdout.readline())["servers"]
        await asyncio.sleep(1.0)
        before = _cpu_seconds(process.pid)
        await asyncio.sleep(seconds)
        idle = (_cpu_seconds(process.pid) - before) / seconds
        async with aiohttp.ClientSession() as http:
            before, start = _cpu_seconds(process.pid), time.perf_counter()
            streams = [_stream(http, url, 256) for url in urls for _ in range(4)]
            results = await asyncio.gather(*streams)
            elapsed = time.perf_counter() - start
            busy = (_cpu_seconds(process.pid) - before) / elapsed
        tokens = sum(len(r[1]) + 1 for r in results)
    finally:
        process.terminate()
        await process.wait()
    return {
        "servers": servers,
        "idle_cpu_cores": idle,
        "streaming_cpu_cores": busy,
        "streams": len(results),
        "tokens_per_s": tokens / elapsed,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    batch = result["batch_curve"]
    ax = axes[0]
    ax.plot(
        [b["batch"] for b in batch],
        [b["itl_mean_ms"] for b in batch],
        "o-",
        label="sim ITL (256 in / 256 out)",
    )
    http = result["http_spot_check"]
    ax.plot(
        [b["batch"] for b in http],
        [b["itl_mean_ms"] for b in http],
        "s",
        label="sim over HTTP (streaming client)",
    )
    lo, hi = PUBLISHED["batch1_itl_ms"]
    ax.axhspan(
        lo, hi, xmax=0.12, alpha=0.2, color="tab:green", label="published batch-1 ITL 10-15 ms"
    )
    ax.errorbar([1], [12], yerr=[2], fmt="^", color="tab:red", label="llm-d-inference-sim 12±2 ms")
    ax.plot([68], [20], "*", ms=12, color="tab:purple", label="Lambda: 3,400 tok/s at ~20 ms")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (running requests)")
    ax.set_ylabel("inter-token latency (ms)")
    ax.set_title("ITL against batch size")
    ax.legend(fontsize=7)
    ax2 = ax.twinx()
    ax2.plot(
        [b["batch"] for b in batch],
        [b["throughput_tok_s"] / 1000 for b in batch],
        "--",
        color="gray",
        label="sim throughput",
    )
    ax2.axhspan(5.1, 5.8, alpha=0.15, color="gray")
    ax2.set_ylabel("output throughput (k tok/s); band: MLPerf 5.1-5.8k")

    ax = axes[1]
    prompts = result["ttft_vs_prompt"]
    xs = [p["prompt_tokens"] for p in prompts]
    ax.plot(xs, [p["ttft_ms"] for p in prompts], "o-", label="sim TTFT, batch 1")
    base, slope = PUBLISHED["llmd_prefill_ms"]
    ax.plot(
        xs, [base + slope * x for x in xs], "--", label="llm-d-inference-sim: 30 ms + 0.25 ms/tok"
    )
    lo, hi = PUBLISHED["batch1_ttft_256_ms"]
    ax.errorbar(
        [256],
        [(lo + hi) / 2],
        yerr=[(hi - lo) / 2],
        fmt="^",
        color="tab:red",
        label="published 256-tok TTFT 60-120 ms",
    )
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("TTFT (ms)")
    ax.set_title("Prefill: TTFT against prompt length")
    ax.legend(fontsize=7)

    ax = axes[2]
    load = result["load_sweep"]
    rates = [row["rate"] for row in load]
    ax.plot(rates, [row["ttft_p50_ms"] for row in load], "o-", label="TTFT p50")
    ax.plot(rates, [row["ttft_p99_ms"] for row in load], "o--", label="TTFT p99")
    ax.plot(rates, [row["itl_p50_ms"] for row in load], "s-", label="ITL p50")
    ax.plot(rates, [row["itl_p99_ms"] for row in load], "s--", label="ITL p99")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (req/s, Poisson)")
    ax.set_ylabel("ms")
    ax.set_title("Latency against load (one server)")
    ax.legend(fontsize=7)
    fig.suptitle("sluice-sim profile llama8b-h100 against published figures")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(result: dict[str, Any]) -> str:
    p = result["profile"]
    lines = [
        "# Simulator calibration: Llama-3.1-8B on one H100",
        "",
        f"Profile `{PROFILE}`: step time (µs) = {p['beta0_us']} + {p['beta1_us']}·prefill tokens "
        f"+ {p['beta2_us']}·decode tokens + {p['beta3_us']:.4f}·context tokens read by decodes, "
        f"noise CV {p['noise_cv']}; max_num_seqs {p['max_num_seqs']}, token budget "
        f"{p['max_num_batched_tokens']}, {p['kv_blocks']} KV blocks of {p['block_size']} tokens.",
        "β0-β2 are the BLIS fit to vLLM 0.8.4. β3 is 128 KiB of KV per token read at 26% of "
        "3.35 TB/s: the BLIS terms alone saturate at ~9.6k output tok/s on the ShareGPT-like mix "
        "below (β3 at the raw bandwidth bound, 0.039 µs); 26% is the effective-bandwidth "
        "fraction that brings saturation to the top of MLPerf's 5.1-5.8k band.",
        "Engine curves are computed in virtual time; the HTTP rows are the real-time server "
        "measured by a streaming client in another process on this 2-core machine.",
        "",
        "![calibration](sim_calibration.png)",
        "",
        "## ITL and throughput against batch size (256 in / 256 out, closed loop)",
        "",
        "| batch | ITL mean (ms) | TTFT mean (ms) | output tok/s |",
        "|---:|---:|---:|---:|",
    ]
    for row in result["batch_curve"]:
        lines.append(
            f"| {row['batch']} | {row['itl_mean_ms']:.2f} | {row['ttft_mean_ms']:.1f} | "
            f"{row['throughput_tok_s']:.0f} |"
        )
    lines += [
        "",
        "HTTP spot check (real-time server, streaming client, 256-token prompts):",
        "",
        "| batch | ITL mean (ms) | TTFT mean (ms) |",
        "|---:|---:|---:|",
    ]
    for row in result["http_spot_check"]:
        lines.append(f"| {row['batch']} | {row['itl_mean_ms']:.2f} | {row['ttft_mean_ms']:.1f} |")
    scale = result["scale"]
    if scale:
        lines += [
            "",
            f"Scale: one `sluice-sim` process hosting {scale['servers']} servers used "
            f"{scale['idle_cpu_cores']:.3f} CPU cores idle, and "
            f"{scale['streaming_cpu_cores']:.2f} cores while streaming {scale['streams']} "
            f"concurrent replies ({scale['tokens_per_s']:.0f} tokens/s in SSE events, "
            "the client on the same 2-core machine).",
        ]
    lines += [
        "",
        "## TTFT against prompt length (batch 1)",
        "",
        "| prompt tokens | sim TTFT (ms) | llm-d-inference-sim (ms) |",
        "|---:|---:|---:|",
    ]
    for row in result["ttft_vs_prompt"]:
        lines.append(
            f"| {row['prompt_tokens']} | {row['ttft_ms']:.1f} | "
            f"{30 + 0.25 * row['prompt_tokens']:.1f} |"
        )
    lines += [
        "",
        "## Latency against offered load (one server, lognormal lengths: prompt median "
        "245, output median 122 tokens)",
        "",
        "| req/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | output tok/s | preemptions |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["load_sweep"]:
        lines.append(
            f"| {row['rate']:g} | {row['ttft_p50_ms']:.1f} | {row['ttft_p99_ms']:.1f} | "
            f"{row['itl_p50_ms']:.2f} | {row['itl_p99_ms']:.2f} | {row['throughput_tok_s']:.0f} | "
            f"{row['preemptions']} |"
        )
    lines += (
        ["", "## Against the published figures", ""]
        + result["verdict"]
        + [
            "",
            "Sources: BLIS (inference-sim) coefficients fitted to vLLM 0.8.4; "
            "llm-d-inference-sim's shipped 8B/H100 profile; Lambda's vLLM 0.5.4 FP8 "
            "throughput; MLPerf results with "
            "vLLM 0.10; order-of-magnitude batch-1 figures for 7-8B models on H100 "
            "(all as collected in the project's reference notes).",
            "",
        ]
    )
    return "\n".join(lines)


def verdict(result: dict[str, Any]) -> list[str]:
    batch = {row["batch"]: row for row in result["batch_curve"]}
    ttft256 = next(r["ttft_ms"] for r in result["ttft_vs_prompt"] if r["prompt_tokens"] == 256)
    b1 = batch[1]["itl_mean_ms"]
    near20 = min(result["batch_curve"], key=lambda r: abs(r["itl_mean_ms"] - 20))
    top = max(result["batch_curve"], key=lambda r: r["throughput_tok_s"])
    sat = max(result["load_sweep"], key=lambda r: r["throughput_tok_s"])
    return [
        f"- Batch-1 ITL: sim {b1:.1f} ms against 10-15 ms published and 12 ± 2 ms in "
        "llm-d-inference-sim. The BLIS fit (vLLM 0.8.4, CUDA graphs) is faster at batch 1 than "
        "the older, rounder figures; we keep the fit because it is the only one measured as a "
        "function of the batch mix, which is what scheduling depends on.",
        f"- 256-token TTFT at batch 1: sim {ttft256:.1f} ms (engine only, no HTTP or tokenizer) "
        "against 60-120 ms published end to end and 94 ms in llm-d-inference-sim; the gap is the "
        "server-side overhead the engine model leaves out (API server, tokenization, scheduling "
        "latency) and is similar for every request, so it shifts TTFT without changing order.",
        f"- Throughput: saturated by the ShareGPT-like mix, one server delivers "
        f"{sat['throughput_tok_s']:.0f} output tok/s (MLPerf, vLLM 0.10: 5,100-5,800; β3 was "
        f"chosen for this). On short 256/256 requests it reaches {top['throughput_tok_s']:.0f} "
        f"tok/s at batch {top['batch']} (ITL {top['itl_mean_ms']:.1f} ms), and at ITL ≈ 20 ms "
        f"it runs batch {near20['batch']} at {near20['throughput_tok_s']:.0f} tok/s; Lambda saw "
        "3,400 tok/s at ~20 ms with vLLM 0.5.4 on an unstated mix. The sim is on the fast side "
        "of the published range, closest where contexts are long.",
        "- Prefill-decode interference: a step carrying a prefill chunk is longer by "
        "β1 per prefill token, so every decode in it waits (shown by a unit test with an "
        "8,000-token prompt stalling a decode by ~140 ms).",
        "- Saturation: past the knee of the load sweep TTFT grows by orders of magnitude while "
        "ITL grows slowly, the shape NIM reports for 70B (407 ms → 8 s TTFT, 19 → 93 ms ITL).",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPORTS)
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    profile = get_profile(PROFILE)
    result: dict[str, Any] = {
        "profile": {k: getattr(profile, k) for k in profile.__dataclass_fields__},
        "batch_curve": [
            closed_loop(profile, b, 256, 256) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256)
        ],
        "ttft_vs_prompt": [
            {"prompt_tokens": n, "ttft_ms": ttft_vs_prompt(profile, n)}
            for n in (64, 128, 256, 512, 1024, 2048, 4096, 8192)
        ],
        "load_sweep": [
            load_sweep(profile, rate, 120.0, seed=int(rate * 10))
            for rate in (2, 5, 10, 15, 20, 25, 30, 35, 40, 60)
        ],
        "http_spot_check": [] if args.skip_http else asyncio.run(http_spot_check([1, 4, 16], 128)),
        "scale": {} if args.skip_http else asyncio.run(scale_check()),
    }
    result["verdict"] = verdict(result)
    publish(args.out, "sim_calibration", result, markdown(result), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
