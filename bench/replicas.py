"""Throughput of one gateway replica against two on one Redis, in the same run.

One simulated server with no modelled compute (``instant``) in its own process; the gateways
in theirs; a closed-loop client here keeping ``--concurrency`` non-streamed requests going for
``--seconds`` per setup, spread round-robin over the replicas. Setups: one replica on the
embedded store, one on Redis, two on Redis. Everything shares this machine's 2 cores, so the
numbers say what Redis and a second replica cost here, not how replicas scale on their own
cores. Writes bench/reports/replicas.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import gateway, redis_server, sim_fleet
from bench.publish import REPORTS, publish
from bench.stats import percentile

MODEL = "replica-model"


async def load(urls: list[str], concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    body = {"model": MODEL, "prompt": "x", "max_tokens": 16, "ignore_eos": True}

    async def worker(index: int) -> None:
        nonlocal errors
        url = urls[index % len(urls)]
        while time.monotonic() < stop:
            start = time.perf_counter()
            async with http.post(url + "/v1/completions", json=body) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return {
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": 1000 * (percentile(latencies, 50) or 0.0),
        "p99_ms": 1000 * (percentile(latencies, 99) or 0.0),
        "errors": errors,
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with sim_fleet(["--servers", "1", "--profile", "instant", "--model", MODEL]) as sims:
        config = {"backends": [{"name": "b0", "url": sims[0], "max_in_flight": 4096}]}
        with tempfile.TemporaryDirectory() as workdir, redis_server(Path(workdir) / "r") as url:
            redis_env = {**os.environ, "SLUICE_REDIS_URL": url}
            for name, replicas, env in (
                ("1 replica, embedded store", 1, None),
                ("1 replica, Redis", 1, redis_env),
                ("2 replicas, Redis", 2, redis_env),
            ):
                async with contextlib.AsyncExitStack() as stack:
                    urls = []
                    for i in range(replicas):
                        folder = Path(workdir) / f"{len(results)}-{i}"
                        folder.mkdir()
                        urls.append(
                            await stack.enter_async_context(gateway(config, folder, env=env))
                        )
                    await load(urls, args.concurrency, 1.0)  # warm up
                    results[name] = await load(urls, args.concurrency, args.seconds)
                    print(name, results[name], flush=True)
    return {
        "benchmark": "replicas",
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "results": results,
    }


def markdown(data: dict[str, Any]) -> str:
    base = next(iter(data["results"].values()))["requests_per_s"]
    lines = [
        "# One gateway replica against two on one Redis",
        "",
        f"Closed loop, {data['concurrency']} concurrent non-streamed requests (16 tokens) for "
        f"{data['seconds']:g} s per setup, against one simulated server with no modelled "
        "compute; client, gateways, Redis and server share this 2-core machine.",
        "",
        "| setup | req/s | vs first | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in data["results"].items():
        lines.append(
            f"| {name} | {row['requests_per_s']:.0f} | {row['requests_per_s'] / base:.2f}x | "
            f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} |"
        )
    lines += [
        "",
        "Redis round trips per request: two (the backend's lease admitted by the shared VBS "
        "and KV rule, and released), plus one per retry while the backend is full across "
        "replicas. Besides, each replica renews its leases and reads every backend's totals "
        "in one round trip per `SLUICE_SHARED_SYNC_S` (0.2 s), and shares samples and looks "
        "for a newer shared length model once per `SLUICE_LEARNING_SYNC_S` (1 s).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPORTS)
    args = parser.parse_args()
    data = asyncio.run(measure(args))
    publish(args.out, "replicas", data, markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
