"""Open-loop workloads: trace arrivals, ShareGPT prompts, SLO classes; and a streaming client."""

from __future__ import annotations

import asyncio
import csv
import itertools
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from bench.data import PromptSample, data_file, open_text

# SCORPIO's six SLO categories for an 8B model: (TTFT ms, TPOT ms).
SCORPIO_CLASSES: dict[str, tuple[float, float]] = {
    "s1": (500, 30),
    "s2": (2000, 30),
    "s3": (3000, 30),
    "s4": (500, 50),
    "s5": (1000, 50),
    "s6": (7500, 50),
}


def azure_gaps(name: str = "azure2023_conv.csv") -> list[float]:
    """Inter-arrival gaps (seconds) of an Azure LLM inference trace."""
    with open_text(data_file(f"traces/{name}")) as handle:
        stamps = [
            datetime.fromisoformat(row["TIMESTAMP"][:26]).timestamp()
            for row in csv.DictReader(handle)
        ]
    return [max(0.0, b - a) for a, b in itertools.pairwise(stamps)]


def scaled_arrivals(gaps: list[float], count: int, rate: float, offset: int = 0) -> list[float]:
    """``count`` arrival times following the trace's gaps, rescaled to a mean of ``rate``/s."""
    window = [gaps[(offset + i) % len(gaps)] for i in range(count)]
    mean = sum(window) / len(window)
    scale = 1.0 / (rate * mean)
    times, t = [], 0.0
    for gap in window:
        times.append(t)
        t += gap * scale
    return times


@dataclass(frozen=True, slots=True)
class Planned:
    """A request to send: at ``at`` seconds from the start, or, one that ``follows`` another
    (a conversation's next turn), ``at`` seconds after that one's answer ended or was
    refused (closed loop within a conversation, as a user replies only once answered)."""

    at: float
    sample: PromptSample
    slo_class: str
    max_tokens: int
    tenant: str | None = None
    adapter: str | None = None  # the LoRA adapter it asks for, if any
    follows: Planned | None = None


def chat_messages(sample: PromptSample) -> list[dict[str, str]]:
    """The sample as a chat request's messages: its earlier turns, then its prompt."""
    roles = ("user", "assistant")
    return [
        {"role": roles[n % 2], "content": text}
        for n, text in enumerate((*sample.earlier, sample.prompt))
    ]


@dataclass(slots=True)
class Result:
    slo_class: str
    status: int
    ttft_s: float | None = None
    tpot_s: float | None = None
    tokens: int = 0
    elapsed_s: float = 0.0
    reason: str | None = None
    tenant: str | None = None
    model: str | None = None  # the model that served it (a variant's, when degraded)
    sent_at: float = 0.0  # seconds after the run's start it was sent


def plan(
    samples: list[PromptSample],
    arrivals: list[float],
    classes: list[str],
    *,
    seed: int,
    max_tokens: int,
) -> list[Planned]:
    rng = random.Random(seed)
    return [Planned(at, rng.choice(samples), rng.choice(classes), max_tokens) for at in arrivals]


def scorpio_load(
    samples: list[PromptSample],
    gaps: list[float],
    count: int,
    rate: float,
    *,
    load: float,
    max_tokens: int,
) -> list[Planned]:
    """``count`` requests arriving at ``rate``/s by the trace's gaps (from its 1000th), each a
    random sample with one of SCORPIO's six classes drawn uniformly. The draw is seeded by
    the load, so every benchmark offers the same mix at the same load."""
    arrivals = scaled_arrivals(gaps, count, rate, offset=1000)
    return plan(
        samples, arrivals, list(SCORPIO_CLASSES), seed=int(load * 100), max_tokens=max_tokens
    )


# A streamed chunk that carries text, whatever the server's JSON spacing.
_TEXT = re.compile(rb'"(?:content|text)":\s*"[^"]')


async def send(
    http: aiohttp.ClientSession,
    url: str,
    model: str,
    item: Planned,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Result:
    body: dict[str, Any] = {
        "model": model,
        "messages": chat_messages(item.sample),
        "max_tokens": item.max_tokens,
        "stream": True,
        **(extra or {}),
    }
    start = time.monotonic()
    first: float | None = None
    last = start
    tokens = 0
    sent_headers = {**(headers or {}), "x-slo-class": item.slo_class}
    try:
        async with http.post(
            url + "/v1/chat/completions", json=body, headers=sent_headers
        ) as response:
            if response.status != 200:
                await response.read()
                return Result(
                    item.slo_class,
                    response.status,
                    elapsed_s=time.monotonic() - start,
                    reason=response.headers.get("x-sluice-reject-reason"),
                )
            async for line in response.content:
                if line.startswith(b"data: {") and _TEXT.search(line):
                    last = time.monotonic()
                    first = first or last
                    tokens += 1
                elif line.startswith(b'data: {"error"'):
                    return Result(item.slo_class, 502, elapsed_s=time.monotonic() - start)
    except aiohttp.ClientError:
        # The server closed or reset the connection (an overloaded engine does): a failure.
        return Result(item.slo_class, 502, elapsed_s=time.monotonic() - start, reason="reset")
    ttft = None if first is None else first - start
    tpot = (last - first) / (tokens - 1) if first is not None and tokens > 1 else None
    return Result(item.slo_class, 200, ttft, tpot, tokens, time.monotonic() - start)


async def run_open_loop(
    urls: str | list[str],
    model: str,
    items: list[Planned],
    headers: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> list[Result]:
    """Send ``items`` at their planned times, each that follows another once that one is
    answered; with several URLs, round-robin over them. Results in the order of ``items``."""
    targets = [urls] if isinstance(urls, str) else urls
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    after = {id(i.follows): i for i in items if i.follows is not None}
    order = {id(item): n for n, item in enumerate(items)}
    results: list[Result | None] = [None] * len(items)
    sent = itertools.count()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        start = time.monotonic()

        async def turns(item: Planned) -> None:
            while True:
                n = next(sent)
                sent_at = time.monotonic() - start
                result = await send(http, targets[n % len(targets)], model, item, headers, extra)
                result.sent_at = sent_at
                results[order[id(item)]] = result
                if progress is not None:
                    progress(n + 1, len(items))
                follower = after.get(id(item))
                if follower is None:
                    return
                await asyncio.sleep(follower.at)
                item = follower

        tasks = []
        for item in (i for i in items if i.follows is None):
            delay = start + item.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(turns(item)))
        await asyncio.gather(*tasks)
    missing = sum(r is None for r in results)
    assert not missing, f"{missing} requests never sent: a turn follows one not among the items"
    return [r for r in results if r is not None]
