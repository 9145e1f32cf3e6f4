"""``make demo``: a simulated vLLM fleet, the gateway, and a short mixed-SLO load through it.

The load uses the official openai SDK, streaming, with ShareGPT prompts and their real reply
lengths (``ignore_eos`` makes the simulator produce exactly that many tokens). Latencies are
measured by the client, so they include everything the gateway adds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from openai import AsyncOpenAI, RateLimitError

from bench.data import PromptSample, data_dir, load_sharegpt
from bench.procs import gateway, sim_fleet
from bench.stats import fmt_ms, percentile
from bench.workload import SCORPIO_CLASSES

CLASSES = SCORPIO_CLASSES
MODEL = "llama-3.1-8b"


@dataclass(slots=True)
class Outcome:
    slo_class: str
    ok: bool
    ttft_s: float | None = None
    tpot_s: float | None = None
    tokens: int = 0
    error: str | None = None
    rejected: bool = False

    @property
    def good(self) -> bool:
        ttft_ms, tpot_ms = CLASSES[self.slo_class]
        return (
            self.ok
            and self.ttft_s is not None
            and self.ttft_s * 1000 <= ttft_ms
            and (self.tpot_s is None or self.tpot_s * 1000 <= tpot_ms)
        )


async def one_request(client: AsyncOpenAI, sample: PromptSample, slo_class: str) -> Outcome:
    start = time.monotonic()
    first: float | None = None
    last = start
    tokens = 0
    try:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": sample.prompt}],
            max_tokens=max(1, min(sample.output_tokens, 512)),
            stream=True,
            extra_body={"ignore_eos": True},
            extra_headers={"x-slo-class": slo_class},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                last = time.monotonic()
                first = first or last
                tokens += 1
    except RateLimitError:  # the SLO guard said no at once: not a failure
        return Outcome(slo_class, ok=False, rejected=True)
    except Exception as exc:  # the demo reports every failure, whatever its kind
        return Outcome(slo_class, ok=False, error=f"{type(exc).__name__}: {exc}")
    ttft = None if first is None else first - start
    tpot = (last - first) / (tokens - 1) if first is not None and tokens > 1 else None
    return Outcome(slo_class, ok=True, ttft_s=ttft, tpot_s=tpot, tokens=tokens)


def report(outcomes: list[Outcome], elapsed: float) -> str:
    lines = [
        f"{'class':<6} {'TTFT/TPOT target':>17} {'sent':>5} {'ok':>4} {'429':>4} {'TTFT p50':>9} "
        f"{'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9} {'attained':>9}",
    ]
    for name, (ttft_ms, tpot_ms) in [*CLASSES.items(), ("all", (0, 0))]:
        group = [o for o in outcomes if name == "all" or o.slo_class == name]
        if not group:
            continue
        ttfts = [o.ttft_s for o in group if o.ttft_s is not None]
        tpots = [o.tpot_s for o in group if o.tpot_s is not None]
        target = "" if name == "all" else f"{ttft_ms} ms/{tpot_ms} ms"
        lines.append(
            f"{name:<6} {target:>17} {len(group):>5} {sum(o.ok for o in group):>4} "
            f"{sum(o.rejected for o in group):>4} "
            f"{fmt_ms(percentile(ttfts, 50)):>9} {fmt_ms(percentile(ttfts, 99)):>9} "
            f"{fmt_ms(percentile(tpots, 50)):>9} {fmt_ms(percentile(tpots, 99)):>9} "
            f"{100 * sum(o.good for o in group) / len(group):>8.1f}%"
        )
    good = sum(o.good for o in outcomes)
    lines.append(
        f"\n{len(outcomes)} requests in {elapsed:.1f} s; goodput {good / elapsed:.2f} req/s; "
        f"{sum(o.rejected for o in outcomes)} refused early (429), "
        f"{sum(not o.ok and not o.rejected for o in outcomes)} failed "
        "(latencies in ms, measured by the client)"
    )
    errors = sorted({o.error for o in outcomes if o.error})
    lines.extend(f"  error: {e}" for e in errors[:5])
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    pool = load_sharegpt(limit=5000)
    source = f"ShareGPT prompts from {data_dir()}"
    samples = rng.sample(pool, args.requests)
    classes = [rng.choice(list(CLASSES)) for _ in samples]
    print(f"Starting {args.servers} simulated vLLM servers (Llama-3.1-8B on H100 profile) ...")
    sim_args = ["--servers", str(args.servers), "--model", MODEL, "--seed", str(args.seed)]
    async with sim_fleet(sim_args) as urls:
        config = {
            "slo_classes": {k: {"ttft_ms": t, "tpot_ms": p} for k, (t, p) in CLASSES.items()},
            "default_class": "s6",
            "backends": [
                {"name": f"vllm-{i}", "url": url, "max_in_flight": 64} for i, url in enumerate(urls)
            ],
        }
        with tempfile.TemporaryDirectory() as workdir:
            async with gateway(config, Path(workdir)) as url:
                print(f"Gateway up at {url}; backends: {', '.join(urls)}")
                print(
                    f"Sending {args.requests} streaming chat requests, Poisson arrivals at "
                    f"{args.rate:g} req/s, {source}, SLO classes drawn uniformly ...\n"
                )
                client = AsyncOpenAI(base_url=url + "/v1", api_key="demo", max_retries=0)
                start = time.monotonic()
                tasks = []
                for sample, slo_class in zip(samples, classes, strict=True):
                    tasks.append(asyncio.create_task(one_request(client, sample, slo_class)))
                    await asyncio.sleep(rng.expovariate(args.rate))
                outcomes = await asyncio.gather(*tasks)
                elapsed = time.monotonic() - start
                await client.close()
    print(report(list(outcomes), elapsed))
    plot(list(outcomes), elapsed, args.plot)
    print(f"\nPlot of this run: {args.plot.resolve()}")
    print("Everything stopped.")
    return 0 if all(o.ok or o.rejected for o in outcomes) else 1


def plot(outcomes: list[Outcome], elapsed: float, path: Path) -> None:
    """Goodput, and each request's TTFT and TPOT against its class's targets, per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(CLASSES)
    fig, (ax_good, ax_ttft, ax_tpot) = plt.subplots(1, 3, figsize=(15, 4.5))
    good = [sum(o.good for o in outcomes if o.slo_class == n) / elapsed for n in names]
    bad = [sum(not o.good for o in outcomes if o.slo_class == n) / elapsed for n in names]
    ax_good.bar(names, good, label="good (met both targets)", color="tab:green")
    ax_good.bar(names, bad, bottom=good, label="refused or late", color="tab:gray")
    ax_good.set(title="Goodput by SLO class", ylabel="requests / s")
    ax_good.set_ylim(0, 1.3 * max([g + b for g, b in zip(good, bad, strict=True)] or [1.0]))
    ax_good.legend(fontsize=8, loc="upper right")
    for axis, attr, index, title in (
        (ax_ttft, "ttft_s", 0, "TTFT against target"),
        (ax_tpot, "tpot_s", 1, "TPOT against target"),
    ):
        for x, name in enumerate(names):
            values = [getattr(o, attr) * 1000 for o in outcomes if o.slo_class == name
                      and getattr(o, attr) is not None]  # fmt: skip
            axis.scatter([x] * len(values), values, s=6, alpha=0.4, color="tab:blue")
            target = CLASSES[name][index]
            axis.hlines(target, x - 0.4, x + 0.4, color="tab:red", linewidth=2)
        axis.set_xticks(range(len(names)), names)
        axis.set(title=f"{title} (red: the class's target)", ylabel="ms", yscale="log")
    fig.suptitle(f"make demo: {len(outcomes)} requests in {elapsed:.1f} s through Sluice")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description="Sluice demo on a simulated fleet")
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=12.0, help="arrivals per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--plot", type=Path, default=Path("demo.png"), help="where to write the run's plot"
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
