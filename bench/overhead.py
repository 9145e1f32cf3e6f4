"""What the gateway adds to each request: direct-to-backend against through-gateway, one run.

One simulated server with the ``instant`` profile (no modelled compute) runs in its own
process, the gateway in another, the client here. Requests go one at a time; the modes are
interleaved in rounds so that drift on a shared machine hits them alike. Reported: p50/p99 of
time to first token and of the whole request, and the gateway's added latency as differences
and ratios of those percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import gateway, sim_fleet
from bench.publish import REPORTS, publish
from bench.stats import percentile

MODEL = "overhead-model"


async def one(
    http: aiohttp.ClientSession,
    url: str,
    *,
    stream: bool,
    tokens: int,
    headers: dict[str, str] | None = None,
) -> tuple[float, float]:
    """(time to first body byte, time to last byte) of one completion request."""
    body = {
        "model": MODEL,
        "prompt": "measure me",
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": stream,
    }
    start = time.perf_counter()
    async with http.post(url + "/v1/completions", json=body, headers=headers) as response:
        first = await response.content.readany()
        ttfb = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {first[:200]!r}")
        while await response.content.readany():
            pass
    return ttfb, time.perf_counter() - start


async def one_rejected(http: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """A request whose TTFT target no backend can meet: the time to its 429."""
    body = {"model": MODEL, "prompt": "measure me", "max_tokens": 16}
    start = time.perf_counter()
    async with http.post(
        url + "/v1/completions", json=body, headers={"x-slo-ttft-ms": "0.01"}
    ) as response:
        await response.read()
        if response.status != 429:
            raise RuntimeError(f"expected 429, got {response.status}")
    elapsed = time.perf_counter() - start
    return elapsed, elapsed


async def background_load(http: aiohttp.ClientSession, url: str, concurrency: int) -> None:
    """Keep ``concurrency`` streaming requests in flight until cancelled."""

    async def worker() -> None:
        while True:
            await one(http, url, stream=True, tokens=64)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure_rejections(
    http: aiohttp.ClientSession, url: str, count: int
) -> dict[str, list[tuple[float, float]]]:
    idle = [await one_rejected(http, url) for _ in range(count)]
    load = asyncio.create_task(background_load(http, url, 32))
    await asyncio.sleep(0.5)
    loaded = [await one_rejected(http, url) for _ in range(count)]
    load.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await load
    return {"reject_idle": idle, "reject_under_load": loaded}


def summarize(samples: list[tuple[float, float]]) -> dict[str, float]:
    firsts = [s[0] for s in samples]
    totals = [s[1] for s in samples]
    out: dict[str, float] = {}
    for name, values in (("ttfb", firsts), ("total", totals)):
        for q in (50, 99):
            value = percentile(values, q)
            assert value is not None
            out[f"{name}_p{q}_ms"] = value * 1000
    return out


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    sim_args = ["--servers", "1", "--profile", "instant", "--model", MODEL]
    results: dict[str, list[tuple[float, float]]] = {}
    async with sim_fleet(sim_args) as urls:
        config = {"backends": [{"name": "b0", "url": urls[0], "max_in_flight": 1024}]}
        with tempfile.TemporaryDirectory() as workdir:
            async with gateway(config, Path(workdir)) as gw_url:
                targets = {"direct": urls[0], "gateway": gw_url}
                connector = aiohttp.TCPConnector(limit=8)
                async with aiohttp.ClientSession(connector=connector) as http:
                    for stream in (False, True):  # warm both paths and connection pools
                        for url in targets.values():
                            for _ in range(20):
                                await one(http, url, stream=stream, tokens=args.tokens)
                    for _ in range(args.rounds):
                        for stream in (False, True):
                            for target, url in targets.items():
                                key = f"{target}_{'stream' if stream else 'plain'}"
                                bucket = results.setdefault(key, [])
                                for _ in range(args.per_round):
                                    bucket.append(
                                        await one(http, url, stream=stream, tokens=args.tokens)
                                    )
                    rejections = await measure_rejections(
                        http, gw_url, args.rounds * args.per_round // 2
                    )
    summary: dict[str, Any] = {k: summarize(v) for k, v in results.items()}
    added: dict[str, Any] = {}
    for mode in ("plain", "stream"):
        direct, through = summary[f"direct_{mode}"], summary[f"gateway_{mode}"]
        added[mode] = {
            f"{metric.removesuffix('_ms')}_added_ms": through[metric] - direct[metric]
            for metric in ("ttfb_p50_ms", "ttfb_p99_ms", "total_p50_ms", "total_p99_ms")
        } | {
            "total_p50_ratio": through["total_p50_ms"] / direct["total_p50_ms"],
            "total_p99_ratio": through["total_p99_ms"] / direct["total_p99_ms"],
        }
    reject = {k: summarize(v) for k, v in rejections.items()}
    return {
        "benchmark": "gateway_overhead",
        "time_to_reject": reject,
        "requests_per_mode": args.rounds * args.per_round,
        "output_tokens": args.tokens,
        "concurrency": 1,
        "backend": "sluice-sim, profile 'instant' (no modelled compute), own process",
        "modes": summary,
        "added": added,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Gateway overhead",
        "",
        f"{result['requests_per_mode']} sequential completion requests per mode, "
        f"{result['output_tokens']} output tokens each, against one simulated server with no "
        "modelled compute, direct and through Sluice in the same run (modes interleaved in "
        "rounds). Times in ms; the client measures to the first body byte and to the last.",
        "",
        "| mode | first byte p50 | first byte p99 | total p50 | total p99 |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, row in result["modes"].items():
        lines.append(
            f"| {key} | {row['ttfb_p50_ms']:.2f} | {row['ttfb_p99_ms']:.2f} | "
            f"{row['total_p50_ms']:.2f} | {row['total_p99_ms']:.2f} |"
        )
    lines += [
        "",
        "| added by the gateway | total p50 | total p99 | p50 ratio | p99 ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, row in result["added"].items():
        lines.append(
            f"| {mode} | {row['total_p50_added_ms']:.2f} | {row['total_p99_added_ms']:.2f} "
            f"| {row['total_p50_ratio']:.2f}x | {row['total_p99_ratio']:.2f}x |"
        )
    lines += [
        "",
        "Time to reject: a request whose TTFT target cannot be met (x-slo-ttft-ms: 0.01) is "
        "answered 429 at arrival; measured by the client, sequentially, with the gateway idle "
        "and with 32 streaming requests in flight through it.",
        "",
        "| case | p50 ms | p99 ms |",
        "|---|---:|---:|",
    ]
    for case, row in result["time_to_reject"].items():
        lines.append(f"| {case} | {row['total_p50_ms']:.2f} | {row['total_p99_ms']:.2f} |")
    lines += ["", "Machine: shared 2-core VM; compare ratios rather than absolute times.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPORTS)
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    publish(args.out, "overhead", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
