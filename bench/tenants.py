"""Benchmark of tenants' fair share under overload, and of what keys and limits cost.

Part 1, fair share (virtual time: the gateway's scheduler, policy, latency models and length
predictor against the simulator's engine model, bench.virtual_gateway). Four simulated
Llama-3.1-8B/H100 servers; ShareGPT prompts; SCORPIO's six classes drawn uniformly; arrivals
by the Azure conversation trace's gaps. Two tenants of equal weight: A sends at 0.4x the
fleet's capacity, B at 1x, 2x and 3x. Each B rate runs with fair share on, by queue order
only (no slots kept for the light tenant) and off, and A alone runs once on the same fleet
with the same arrivals.

Part 2, overhead (real sockets: a simulator process and a gateway process): the time from
request to reply through the gateway with client keys and per-tenant limits, against the
same gateway with neither, interleaved in rounds; once on the embedded store and once on
Redis (where each request's limit check is one Lua call).

Writes bench/reports/tenants.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.data import PromptSample, load_sharegpt
from bench.guards import BACKENDS, capacity_per_backend, summarize
from bench.overhead import one
from bench.procs import gateway, redis_server, sim_fleet
from bench.publish import REPORTS, publish
from bench.sim.profiles import get_profile
from bench.stats import percentile
from bench.virtual_gateway import run_virtual
from bench.workload import SCORPIO_CLASSES, Planned, Result, azure_gaps, plan, scaled_arrivals
from gateway.config import LatencyPrior, SchedulerConfig, TenantConfig
from predictor import artifact
from predictor.model import LengthModel

A_LOAD = 0.4
TENANTS = {"a": TenantConfig(weight=1.0), "b": TenantConfig(weight=1.0)}
A_TARGET = 0.95  # A keeps this share of its goodput alone, with fair share on
TOTAL_TOLERANCE = 0.05  # total goodput with fair share on, against off
ADDED_TARGET_MS = 0.1  # key checking and limiting, p50 per request
OVERHEAD_MODEL = "overhead-model"
# Limits high enough never to refuse: what is measured is the checking.
LIMITS = {"requests_per_second": 1e6, "tokens_per_minute": 10**11, "max_concurrent": 100_000}


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


# Fair share with a slot kept per light tenant (the default), by queue order only
# (reserve_slots 0), and off.
MODES = (("on", True, 1), ("order only", True, 0), ("off", False, 0))


def merged(*loads: list[Planned]) -> list[Planned]:
    return list(heapq.merge(*loads, key=lambda i: i.at))


def run(
    items: list[Planned],
    span_s: float,
    lengths: LengthModel,
    *,
    fair: bool,
    reserve_slots: int = 1,
) -> dict[str, Any]:
    started = time.monotonic()
    share = {"enabled": fair, "reserve_slots": reserve_slots}
    scheduler = SchedulerConfig.model_validate({"fair_share": share})
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
        for mode, fair, reserve in MODES:
            result = run(items, span, lengths, fair=fair, reserve_slots=reserve)
            runs.setdefault(f"{b_load:g}", {})[mode] = result
            print(
                f"B at {b_load:g}x, fair share {mode}: "
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


@contextlib.contextmanager
def maybe_redis(use: bool, workdir: Path) -> Iterator[str | None]:
    if not use:
        yield None
        return
    with redis_server(workdir) as url:
        yield url


async def _client_key(http: aiohttp.ClientSession, url: str) -> str:
    async with http.post(url + "/admin/keys", json={"tenant": "acme"}) as response:
        if response.status != 201:
            raise RuntimeError(f"creating a key: HTTP {response.status}")
        return str((await response.json())["key"])


async def overhead_store(
    args: argparse.Namespace, store: str, sim_url: str, workdir: Path
) -> dict[str, Any]:
    """Two gateways on one simulated server (and, for ``redis``, one redis-server): one with
    no tenants, one with client keys and limits; requests interleaved between them."""
    backends = [{"name": "b0", "url": sim_url, "max_in_flight": 1024}]
    plain_config: dict[str, Any] = {"backends": backends}
    tenant_config: dict[str, Any] = {"backends": backends, "tenants": {"acme": {"limits": LIMITS}}}
    samples: dict[str, list[tuple[float, float]]] = {"no_tenants": [], "keys_and_limits": []}
    with maybe_redis(store == "redis", workdir) as redis_url:

        def env(prefix: str) -> dict[str, str] | None:
            if redis_url is None:
                return None
            return {**os.environ, "SLUICE_REDIS_URL": redis_url, "SLUICE_REDIS_PREFIX": prefix}

        async with (
            gateway(plain_config, workdir / "plain", env("plain")) as plain,
            gateway(tenant_config, workdir / "tenants", env("tenants")) as tenants,
        ):
            connector = aiohttp.TCPConnector(limit=8)
            async with aiohttp.ClientSession(connector=connector) as http:
                key = await _client_key(http, tenants)
                targets = {
                    "no_tenants": (plain, None),
                    "keys_and_limits": (tenants, {"Authorization": f"Bearer {key}"}),
                }
                for url, headers in targets.values():  # warm both paths and pools
                    for _ in range(50):
                        await one(http, url, stream=False, tokens=args.tokens, headers=headers)
                for _ in range(args.rounds):
                    for name, (url, headers) in targets.items():
                        for _ in range(args.per_round):
                            samples[name].append(
                                await one(
                                    http, url, stream=False, tokens=args.tokens, headers=headers
                                )
                            )
    out: dict[str, Any] = {}
    for name, values in samples.items():
        totals = [v[1] * 1000 for v in values]
        out[name] = {"p50_ms": percentile(totals, 50), "p99_ms": percentile(totals, 99)}
    base, tenants_row = out["no_tenants"], out["keys_and_limits"]
    out["added_p50_ms"] = tenants_row["p50_ms"] - base["p50_ms"]
    out["added_p99_ms"] = tenants_row["p99_ms"] - base["p99_ms"]
    out["requests_each"] = args.rounds * args.per_round
    return out


async def overhead_part(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    sim_args = ["--servers", "1", "--profile", "instant", "--model", OVERHEAD_MODEL]
    async with sim_fleet(sim_args) as urls:
        for store in args.stores:
            with tempfile.TemporaryDirectory() as workdir:
                root = Path(workdir)
                (root / "plain").mkdir()
                (root / "tenants").mkdir()
                results[store] = await overhead_store(args, store, urls[0], root)
            row = results[store]
            print(
                f"overhead ({store}): added p50 {row['added_p50_ms']:.3f} ms, "
                f"p99 {row['added_p99_ms']:.3f} ms",
                flush=True,
            )
    return {
        "stores": results,
        "output_tokens": args.tokens,
        "backend": "sluice-sim, profile 'instant', own process; gateways in their own",
    }


def verdicts(data: dict[str, Any]) -> list[str]:
    fair = data["fair_share"]
    alone = fair["alone"]["a"]["goodput_rps"]
    lines = []
    for b_load, pair in fair["runs"].items():
        kept = pair["on"]["a"]["goodput_rps"] / alone
        total = pair["on"]["total"]["goodput_rps"] / pair["off"]["total"]["goodput_rps"]
        lines.append(
            f"- B at {b_load}x: A keeps {kept:.3f} of its goodput alone (target >= "
            f"{A_TARGET}: {'met' if kept >= A_TARGET else 'missed'}); total goodput with fair "
            f"share {total:.3f}x of without (target within {TOTAL_TOLERANCE:.0%}: "
            f"{'met' if abs(total - 1) <= TOTAL_TOLERANCE else 'missed'})."
        )
    for store, row in data.get("overhead", {}).get("stores", {}).items():
        added = row["added_p50_ms"]
        lines.append(
            f"- Keys and limits, {store} store: {added:.3f} ms added at p50 (target <= "
            f"{ADDED_TARGET_MS} ms: {'met' if added <= ADDED_TARGET_MS else 'missed'})."
        )
    return lines


def markdown(data: dict[str, Any]) -> str:
    fair = data["fair_share"]
    alone = fair["alone"]["a"]
    lines = [
        "# Tenants: fair share under overload, and what keys and limits cost",
        "",
        f"Fair share, in virtual time (the gateway's scheduler and guards against the "
        f"simulator's engine model): {fair['backends']} simulated {fair['profile']} servers, "
        f"capacity {fair['capacity_rps']:.1f} req/s; {fair['span_s']:g} s of arrivals by the "
        "Azure conversation trace's gaps; ShareGPT prompts; SCORPIO's six classes drawn "
        f"uniformly. Tenants A and B of equal weight: A at {fair['a_load']:g}x capacity, B at "
        "each rate below; goodput is requests that met both targets per second of arrivals. "
        f"A alone: goodput {alone['goodput_rps']:.1f} req/s, attainment "
        f"{alone['attainment_offered']:.3f}. Fair share *on* is the default (queue order by "
        "share, and one slot of the model kept for each recently active tenant below its "
        "share); *order only* is the queue order without kept slots (`reserve_slots: 0`).",
        "",
        "| B load | fair share | A goodput | A / alone | A attainment | B goodput | "
        "B attainment | total goodput | total / off |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b_load, pair in fair["runs"].items():
        off_total = pair["off"]["total"]["goodput_rps"]
        for mode, _, _ in MODES:
            if mode not in pair:
                continue
            run_ = pair[mode]
            a, b, total = run_["a"], run_["b"], run_["total"]
            lines.append(
                f"| {b_load}x | {mode} | {a['goodput_rps']:.1f} | "
                f"{a['goodput_rps'] / alone['goodput_rps']:.3f} | "
                f"{a['attainment_offered']:.3f} | {b['goodput_rps']:.1f} | "
                f"{b['attainment_offered']:.3f} | {total['goodput_rps']:.1f} | "
                f"{total['goodput_rps'] / off_total:.3f} |"
            )
    overhead = data.get("overhead")
    if overhead is not None:
        lines += [
            "",
            "Cost of keys and limits: two gateway processes in the same run on one simulated "
            "server with no modelled compute, one with no tenants, one where every request "
            "carries a client key and its tenant has requests, tokens and concurrency limits "
            "(set high, so none refuses); sequential non-streamed requests of "
            f"{overhead['output_tokens']} tokens, the two interleaved in rounds. Times in ms, "
            "as the client measures the whole request.",
            "",
            "| store | requests each | no tenants p50 | p99 | keys + limits p50 | p99 | "
            "added p50 | added p99 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for store, row in overhead["stores"].items():
            base, tenants_row = row["no_tenants"], row["keys_and_limits"]
            lines.append(
                f"| {store} | {row['requests_each']} | {base['p50_ms']:.3f} | "
                f"{base['p99_ms']:.3f} | {tenants_row['p50_ms']:.3f} | "
                f"{tenants_row['p99_ms']:.3f} | {row['added_p50_ms']:.3f} | "
                f"{row['added_p99_ms']:.3f} |"
            )
    lines += ["", "## Targets", "", *verdicts(data), ""]
    lines += [
        "Command: `python -m bench.tenants`. Machine: shared 2-core VM; the overhead figures "
        "are differences within one run.",
        "",
    ]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fair = data["fair_share"]
    loads = list(fair["runs"])
    alone = fair["alone"]["a"]["goodput_rps"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"on": "-o", "order only": "-.^", "off": "--s"}
    for mode, style in styles.items():
        if mode not in fair["runs"][loads[0]]:
            continue
        axes[0].plot(
            loads,
            [fair["runs"][x][mode]["a"]["goodput_rps"] for x in loads],
            style,
            label=f"A, fair share {mode}",
        )
        axes[0].plot(
            loads,
            [fair["runs"][x][mode]["b"]["goodput_rps"] for x in loads],
            style,
            label=f"B, fair share {mode}",
        )
    axes[0].axhline(alone, color="grey", linestyle=":", label="A alone")
    axes[0].set_xlabel("B's load (x capacity)")
    axes[0].set_ylabel("goodput (req/s)")
    axes[0].legend(fontsize=8)
    axes[0].set_title("Goodput per tenant")
    for mode, style in styles.items():
        if mode not in fair["runs"][loads[0]]:
            continue
        axes[1].plot(
            loads,
            [fair["runs"][x][mode]["total"]["goodput_rps"] for x in loads],
            style,
            label=f"fair share {mode}",
        )
    axes[1].set_xlabel("B's load (x capacity)")
    axes[1].set_ylabel("total goodput (req/s)")
    axes[1].legend(fontsize=8)
    axes[1].set_title("Total goodput")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--b-loads", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--span-s", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--stores", nargs="+", default=["embedded", "redis"])
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--out", type=Path, default=REPORTS)
    args = parser.parse_args()
    data: dict[str, Any] = {"benchmark": "tenants", "fair_share": fair_share_part(args)}
    if not args.skip_overhead:
        data["overhead"] = asyncio.run(overhead_part(args))
    publish(args.out, "tenants", data, markdown(data), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
