"""Benchmark of prefix-cache-aware placement (virtual time, and over HTTP with the peers).

The gateway's own scheduler, guards, latency models, length predictor and prefix index,
driven in virtual time against the simulator's engine with vLLM's automatic prefix caching
(bench.virtual_gateway). Traces: the Mooncake conversation trace, whose ``hash_ids`` name
512-token blocks (each request's prompt is built of word blocks that repeat exactly where the
hash ids do, so the engines' caches hit where Mooncake's did; arrivals by the trace's own
times, rescaled to each load); ShareGPT conversations, each turn a chat request quoting the
earlier turns and the engine's replies to them, sent once the last turn is answered (closed
loop; measured over the steady part); and the single-turn ShareGPT mix of the guards
benchmark, to show that nothing regressed. SCORPIO's six classes drawn uniformly; four
simulated Llama-3.1-8B/H100 servers. Beside the results, what the cache could give at most
on each trace (``ceiling``).

Systems, same fleet, arrivals and prompts: Sluice with prefix awareness (prefill, KV fit
and placement count each backend's expected cached prefix; replies report cached tokens),
Sluice without it, and least-loaded forwarding (no gateway queue), the engines caching in
every case. With ``--http``, the ShareGPT conversations over real sockets against
vllm-router's and SMG's cache-aware policies, time dilated. Writes
bench/reports/prefix.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from bench.data import PromptSample, data_file, load_sharegpt, open_text
from bench.guards import BACKENDS, capacity_per_backend, dilated_env, gateway_config, summarize
from bench.peers import CACHE_AWARE, client_headers, running
from bench.peers import LABELS as PEER_LABELS
from bench.peers import Fleet as PeerFleet
from bench.procs import sim_fleet
from bench.publish import REPORTS, publish
from bench.sim.prefix_cache import reply_text, token_ids
from bench.sim.profiles import get_profile
from bench.sim.virtual import Arrival, simulate
from bench.stats import percentile
from bench.virtual_gateway import run_virtual
from bench.workload import (
    SCORPIO_CLASSES,
    Planned,
    Result,
    azure_gaps,
    run_open_loop,
    scaled_arrivals,
    scorpio_load,
)
from gateway.config import LatencyPrior, SchedulerConfig
from predictor import artifact

BLOCK_TOKENS = 512  # Mooncake's hash-id block
PROFILE = "llama8b-h100"
SYSTEMS: dict[str, dict[str, Any]] = {
    "sluice_prefix": {"scheduler": {}, "max_in_flight": 256},
    "sluice_no_prefix": {"scheduler": {"prefix_aware": False}, "max_in_flight": 256},
    "least_loaded": {"scheduler": {"policy": "least_loaded"}, "max_in_flight": 100_000},
}
LABELS = {
    "sluice_prefix": "Sluice, prefix-aware",
    "sluice_no_prefix": "Sluice, no prefix awareness",
    "least_loaded": "least-loaded, no queue",
}
TARGET_GAIN = 1.3
SINGLE = "single-turn"
NOISE = 0.02  # what two placements of one run's requests differ by without a cause
HTTP_MODEL = "prefix-model"
HTTP_THINK_S = 0.5  # fewer requests sustain the load over HTTP with a shorter think time


def _word(block: int, index: int) -> str:
    """Three characters and a space: one token for the engine and for the gateway."""
    value = (block * 7919 + index * 104_729) % 46_656
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    return digits[value // 1296] + digits[(value // 36) % 36] + digits[value % 36]


def mooncake(count: int, max_tokens: int) -> list[tuple[float, PromptSample]]:
    """The trace's first ``count`` requests: (arrival s, prompt of its blocks)."""
    blocks: dict[int, str] = {}
    out: list[tuple[float, PromptSample]] = []
    with open_text(data_file("traces/mooncake_conversation_trace.jsonl")) as handle:
        for line in handle:
            if len(out) >= count:
                break
            row = json.loads(line)
            ids: list[int] = row["hash_ids"]
            length = int(row["input_length"])
            parts = []
            for n, block in enumerate(ids):
                size = min(BLOCK_TOKENS, length - n * BLOCK_TOKENS)
                if size <= 0:
                    break
                if size == BLOCK_TOKENS:
                    if block not in blocks:
                        blocks[block] = " ".join(_word(block, i) for i in range(size))
                    parts.append(blocks[block])
                else:
                    parts.append(" ".join(_word(block, i) for i in range(size)))
            text = " ".join(parts)
            tokens = len(text.split())
            output = max(1, min(int(row["output_length"]), max_tokens))
            sample = PromptSample(f"mooncake-{len(out)}", text, tokens, output)
            out.append((row["timestamp"] / 1000.0, sample))
    return out


THINK_S = 2.0  # from a turn's answer to the conversation's next turn (closed loop)
MAX_TURNS = 6  # a conversation's first turns only


def sharegpt_turns(count: int, max_tokens: int) -> list[list[PromptSample]]:
    """ShareGPT conversations of two turns or more, each turn a chat request with the whole
    conversation before it: the earlier prompts and the replies the simulated engine gives
    them (the data set has reply lengths, not texts; the engine's replies are
    ``reply_text`` of the true length, so a turn quotes exactly what the last one got, as a
    chat client does). Token counts are the simulator's (a word or mark each)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    with open_text(data_file("sharegpt_lengths.jsonl")) as handle:
        for line in handle:
            row = json.loads(line)
            rows.setdefault(str(row["conversation"]), []).append(row)
    conversations: list[list[PromptSample]] = []
    total = 0
    for name, turns in rows.items():
        if len(turns) < 2:
            continue
        turns = sorted(turns, key=lambda r: int(r["turn"]))[:MAX_TURNS]
        earlier: tuple[str, ...] = ()
        samples = []
        for row in turns:
            output = max(1, min(int(row["output_tokens"]), max_tokens))
            tokens = len(token_ids("\n".join((*earlier, row["prompt"]))))
            samples.append(
                PromptSample(f"{name}-{row['turn']}", row["prompt"], tokens, output, earlier)
            )
            earlier = (*earlier, row["prompt"], reply_text(output))
        if any(s.prompt_tokens + s.output_tokens > 16_000 for s in samples):
            continue  # beyond the profile's context
        conversations.append(samples)
        total += len(samples)
        if total >= count:
            break
    return conversations


def conversation_load(
    conversations: list[list[PromptSample]], rate: float, seed: int, think_s: float = THINK_S
) -> list[Planned]:
    """Conversations starting by the Azure conversation trace's gaps, each turn sent
    ``think_s`` after the last one's answer (closed loop within a conversation). They start
    at ``rate`` over their mean number of turns per second: once as many are under way as
    start while one lasts, turns come at ``rate`` whatever the answers' times (Little)."""
    rng = random.Random(seed)
    turns = sum(len(c) for c in conversations)
    starts = scaled_arrivals(azure_gaps(), len(conversations), rate * len(conversations) / turns)
    classes = list(SCORPIO_CLASSES)
    items: list[Planned] = []
    for start, conversation in zip(starts, conversations, strict=True):
        previous: Planned | None = None
        for sample in conversation:
            at = start if previous is None else think_s
            previous = Planned(
                at, sample, rng.choice(classes), sample.output_tokens, follows=previous
            )
            items.append(previous)
    return items


def measured(items: list[Planned], results: list[Result]) -> tuple[list[Result], float]:
    """The results a run's figures count, and the seconds they were sent over. Open loop:
    all of them, from the first sent to the last. With conversations (closed loop), only
    the steady part: the turns sent from a third of the way through the conversations'
    starts to the last start, as the first third fills up with conversations under way and
    after the last start they only drain."""
    if all(i.follows is None for i in items):
        stamps = [r.sent_at for r in results]
        return results, (max(stamps) - min(stamps) if stamps else 0.0)
    last = max(i.at for i in items if i.follows is None)
    lo = last / 3
    return [r for r in results if lo <= r.sent_at <= last], last - lo


def mooncake_hits(count: int, blocks: int | None = None) -> list[int]:
    """Per request, the prompt tokens that could hit at most: its leading blocks seen in any
    earlier request, as one server with an unbounded cache would find them (with
    ``blocks``, one whose cache holds that many of the trace's blocks, least recently used
    out first)."""
    seen: OrderedDict[int, None] = OrderedDict()
    hits: list[int] = []
    with open_text(data_file("traces/mooncake_conversation_trace.jsonl")) as handle:
        for n, line in enumerate(handle):
            if n >= count:
                break
            row = json.loads(line)
            ids, length = row["hash_ids"], int(row["input_length"])
            run = 0
            for block in ids:
                if block not in seen:
                    break
                run += 1
            hits.append(min(run * BLOCK_TOKENS, length - 1))
            for block in ids:
                seen[block] = None
                seen.move_to_end(block)
            while blocks is not None and len(seen) > blocks:
                seen.popitem(last=False)
    return hits


def conversation_hits(conversations: list[list[PromptSample]]) -> list[int]:
    """Per turn, the prompt tokens that could hit at most: the last turn's prompt and the
    KV its reply filled (all but the reply's last token), in whole blocks."""
    block = get_profile(PROFILE).block_size
    hits: list[int] = []
    for conversation in conversations:
        for n, sample in enumerate(conversation):
            if n == 0:
                hits.append(0)
                continue
            last = conversation[n - 1]
            reach = (last.prompt_tokens + last.output_tokens - 1) // block * block
            hits.append(min(reach, sample.prompt_tokens - 1))
    return hits


def ceiling(samples: list[PromptSample], hits: list[int]) -> tuple[float, float]:
    """(the share of the prompts' tokens that could hit, how many times the requests a
    server serves if every one of them hit, against none: its prefill skipped, its KV
    unchanged (a hit's KV is still read by every decode); the most any placement can gain
    from the cache)."""
    total = sum(s.prompt_tokens for s in samples)
    return sum(hits) / total, capacity(samples, hits=hits) / capacity(samples)


def capacity(
    samples: list[PromptSample], arrival_rps: float = 1000.0, hits: list[int] | None = None
) -> float:
    """Requests/s one server completes saturated by this mix, arriving at ``arrival_rps``,
    with no cache hits or with ``hits`` prompt tokens of each found cached (engine model,
    virtual time): the load scale, the same for every system."""
    profile = get_profile(PROFILE)
    found = hits if hits is not None else [0] * len(samples)
    arrivals = [
        Arrival(i / arrival_rps, s.prompt_tokens, s.output_tokens, known_hit=h)
        for i, (s, h) in enumerate(zip(samples, found, strict=True))
    ]
    done = simulate(profile, arrivals)
    finishes = sorted(r.finished_at or 0.0 for r in done)
    lo, hi = len(finishes) // 4, 3 * len(finishes) // 4
    served = (hi - lo) / (finishes[hi] - finishes[lo])
    assert served < 0.9 * arrival_rps, "not saturated: send them faster"
    return served


def plan_load(trace: list[tuple[float, PromptSample]], rate: float, seed: int) -> list[Planned]:
    rng = random.Random(seed)
    span = trace[-1][0] - trace[0][0]
    scale = (len(trace) / rate) / span if span > 0 else 1.0
    start = trace[0][0]
    classes = list(SCORPIO_CLASSES)
    return [
        Planned((at - start) * scale, sample, rng.choice(classes), sample.output_tokens)
        for at, sample in trace
    ]


def run_system(items: list[Planned], name: str, capacity_rps: float) -> dict[str, Any]:
    spec = SYSTEMS[name]
    started = time.monotonic()
    counters: dict[str, int] = {}
    outcome: list[Result] = run_virtual(
        items,
        profile=get_profile(PROFILE),
        backends=BACKENDS,
        scheduler=SchedulerConfig.model_validate(spec["scheduler"]),
        max_in_flight=spec["max_in_flight"],
        prior=LatencyPrior(),
        lengths=artifact.load().model,
        prefix_caching=True,
        counters=counters,
    )
    counted, span = measured(items, outcome)
    summary = summarize(counted, 1.0, span)
    summary["offered_load"] = len(counted) / span / capacity_rps
    queries, hits = counters.get("prefix_queries", 0), counters.get("prefix_hits", 0)
    summary["hit_rate"] = hits / queries if queries else 0.0
    summary["wall_s"] = round(time.monotonic() - started, 1)
    ttfts = [r.ttft_s * 1000 for r in counted if r.status == 200 and r.ttft_s is not None]
    summary["ttft_p50_ms"] = percentile(ttfts, 50)
    return summary


def sweep(
    name: str, plans: dict[float, list[Planned]], systems: list[str], capacity_rps: float
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for load, items in plans.items():
        for system in systems:
            row = run_system(items, system, capacity_rps)
            results.setdefault(f"{load:g}", {})[system] = row
            print(
                f"{name} {load:g}x {system}: goodput {row['goodput_rps']:.2f} req/s, attainment "
                f"{row['attainment_offered']:.3f}/{row['attainment_admitted'] or 0:.3f}, hit rate "
                f"{row['hit_rate']:.3f}, TTFT p50 {row['ttft_p50_ms'] or 0:.0f} ms "
                f"({row['wall_s']} s)",
                flush=True,
            )
    return results


def _fleet_lru_hit_rate(trace: list[tuple[float, PromptSample]]) -> float:
    """The share of the prompts' tokens that would hit in one cache as large as the whole
    fleet's KV, least recently used out first."""
    kv = get_profile(PROFILE).kv_tokens * BACKENDS
    hits = mooncake_hits(len(trace), blocks=kv // BLOCK_TOKENS)
    return sum(hits) / sum(s.prompt_tokens for _, s in trace)


def _ceiling(samples: list[PromptSample], hits: list[int]) -> dict[str, float]:
    rate, gain = ceiling(samples, hits)
    return {"ideal_hit_rate": rate, "ceiling_gain": gain}


TRACES = ("mooncake", "sharegpt", SINGLE)


def run(args: argparse.Namespace) -> dict[str, Any]:
    traces: dict[str, Any] = {}
    if "mooncake" in args.traces:
        trace = mooncake(args.requests, args.max_tokens)
        fleet = capacity([s for _, s in trace]) * BACKENDS
        print(f"mooncake: capacity {fleet:.2f} req/s for the fleet", flush=True)
        plans = {load: plan_load(trace, load * fleet, seed=int(load * 100)) for load in args.loads}
        traces["mooncake"] = {
            "description": f"the first {len(trace)} requests of the Mooncake conversation "
            "trace (prompts built so that their 512-token blocks repeat where the trace's "
            "hash ids do), arrivals by the trace's times rescaled to each load",
            "requests": len(trace),
            "capacity_rps": fleet,
            **_ceiling([s for _, s in trace], mooncake_hits(len(trace))),
            "fleet_lru_hit_rate": _fleet_lru_hit_rate(trace),
            "results": sweep("mooncake", plans, args.systems, fleet),
        }
    if "sharegpt" in args.traces:
        conversations = sharegpt_turns(args.conversation_turns, args.max_tokens)
        turns = [s for c in conversations for s in c]
        fleet = capacity(turns) * BACKENDS
        print(f"sharegpt: capacity {fleet:.2f} req/s for the fleet", flush=True)
        plans = {
            load: conversation_load(conversations, load * fleet, seed=int(load * 100))
            for load in args.loads
        }
        traces["sharegpt"] = {
            "description": f"{len(conversations)} ShareGPT conversations ({len(turns)} turns, "
            f"the first {MAX_TURNS} at most of each) replayed turn by turn with their whole "
            "history as chat messages (each reply quoted as the simulated engine gave it, "
            f"of the true length), each turn sent {THINK_S:g} s after the last one's answer "
            "(or refusal), conversations starting by the Azure conversation trace's gaps; the "
            "figures count the turns sent from a third of the way through the conversations' "
            "starts to the last start (the steady part)",
            "requests": len(turns),
            "capacity_rps": fleet,
            **_ceiling(turns, conversation_hits(conversations)),
            "results": sweep("sharegpt", plans, args.systems, fleet),
        }
    if SINGLE in args.traces:
        samples = [s for s in load_sharegpt() if s.prompt_tokens < 6000]
        fleet = capacity_per_backend(samples, args.max_tokens) * BACKENDS
        print(f"{SINGLE}: capacity {fleet:.2f} req/s for the fleet", flush=True)
        gaps = azure_gaps()
        plans = {
            load: scorpio_load(
                samples, gaps, args.requests, load * fleet, load=load, max_tokens=args.max_tokens
            )
            for load in args.loads
        }
        traces[SINGLE] = {
            "description": f"{args.requests} single-turn ShareGPT requests (the guards "
            "benchmark's mix: a prompt drawn at random for each, so some repeat), arriving by "
            "the Azure conversation trace's gaps",
            "requests": args.requests,
            "capacity_rps": fleet,
            "results": sweep(SINGLE, plans, args.systems, fleet),
        }
    return {
        "benchmark": "prefix",
        "backends": BACKENDS,
        "profile": PROFILE,
        "max_tokens": args.max_tokens,
        "traces": traces,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def verdicts(data: dict[str, Any]) -> list[str]:
    lines = []
    for trace, block in data["traces"].items():
        for load, rows in block["results"].items():
            mine, plain = rows.get("sluice_prefix"), rows.get("sluice_no_prefix")
            if mine is None or plain is None:
                continue
            if trace == SINGLE:
                ratio = mine["goodput_rps"] / plain["goodput_rps"] if plain["goodput_rps"] else None
                verdict = "met" if ratio is not None and ratio >= 1 - NOISE else "missed"
                lines.append(
                    f"- {trace} at {load}x: goodput {_fmt(ratio, '.3f')}x Sluice without prefix "
                    f"awareness (target: no regression beyond {NOISE:.0%}: {verdict})."
                )
                continue
            if float(load) in (1.0, 1.5):
                gain = mine["goodput_rps"] / plain["goodput_rps"] if plain["goodput_rps"] else None
                verdict = "met" if gain is not None and gain >= TARGET_GAIN else "missed"
                lines.append(
                    f"- {trace} at {load}x: goodput {_fmt(gain, '.2f')}x Sluice without prefix "
                    f"awareness (target >= {TARGET_GAIN}: {verdict}; every possible hit would "
                    f"give a server {block['ceiling_gain']:.2f}x the capacity of none)."
                )
            lines.append(
                f"- {trace} at {load}x: fleet hit rate {mine['hit_rate']:.3f} with prefix "
                f"awareness, {plain['hit_rate']:.3f} without."
            )
    return lines


def http_verdicts(data: dict[str, Any]) -> list[str]:
    http = data.get("http")
    if http is None:
        return []
    lines = []
    for load, rows in http["results"].items():
        mine = rows.get("sluice_prefix")
        peers = {p: rows[p] for p in CACHE_AWARE if p in rows}
        if mine is None or not peers:
            continue
        top_hits = max(p["hit_rate"] for p in peers.values())
        hits_verdict = "met" if mine["hit_rate"] >= top_hits else "missed"
        hits = (
            f"hit rate {mine['hit_rate']:.3f}, the best peer's {top_hits:.3f} (target: no "
            f"lower: {hits_verdict})"
        )
        if float(load) < 1.0:
            fastest = min(
                (p for p in peers if peers[p]["ttft_p50_ms"] is not None),
                key=lambda p: peers[p]["ttft_p50_ms"],
                default=None,
            )
            if fastest is None or mine["ttft_p50_ms"] is None:
                continue
            theirs = peers[fastest]["ttft_p50_ms"]
            verdict = "met" if mine["ttft_p50_ms"] <= theirs else "missed"
            lines.append(
                f"- HTTP ShareGPT at {load}x: TTFT p50 {mine['ttft_p50_ms']:.0f} ms, the best "
                f"cache-aware peer's ({HTTP_LABELS[fastest]}) {theirs:.0f} ms (target: no "
                f"worse: {verdict}); {hits}."
            )
            continue
        best_name = max(peers, key=lambda p: peers[p]["goodput_rps"])
        best = peers[best_name]
        gain = mine["goodput_rps"] / best["goodput_rps"] if best["goodput_rps"] else None
        verdict = "met" if gain is not None and gain >= TARGET_GAIN else "missed"
        lines.append(
            f"- HTTP ShareGPT at {load}x: goodput {_fmt(gain, '.2f')}x the best cache-aware "
            f"peer ({HTTP_LABELS[best_name]}) (target >= {TARGET_GAIN}: {verdict}); {hits}."
        )
    return lines


def _ceiling_lines(block: dict[str, Any]) -> list[str]:
    if "ceiling_gain" not in block:
        return []
    lines = [
        f"At most {block['ideal_hit_rate']:.3f} of these prompts' tokens could hit at all "
        "(as one server with an unbounded cache would find them); were every one of them a "
        f"hit, a server would serve {block['ceiling_gain']:.2f}x the requests it serves with "
        "none (the engine model with their prefill skipped, KV unchanged): the most any "
        "placement can gain from the cache on this trace."
    ]
    if block.get("fleet_lru_hit_rate") is not None:
        lines[0] += (
            f" One cache as large as the whole fleet's KV would hit "
            f"{block['fleet_lru_hit_rate']:.3f} of them (least recently used out first)."
        )
    return lines


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# Prefix-cache-aware placement",
        "",
        "Virtual time: the gateway's scheduling code against the simulator's engine with "
        f"automatic prefix caching; {data['backends']} simulated {data['profile']} servers; "
        f"replies of the traces' lengths up to {data['max_tokens']} tokens; SCORPIO's six "
        "classes drawn uniformly. Loads are multiples of the fleet's capacity on each trace "
        "without cache hits; `offered` is the requests counted over their span, per system (all of "
        "them, first to last, on the open-loop traces; the steady part of the conversations, "
        "whose turns wait for their answers, so that a slower system is offered less). Hit "
        "rate: the engines' own prefix-cache counters (hit tokens over queried tokens).",
    ]
    for trace, block in data["traces"].items():
        lines += [
            "",
            f"## {trace}",
            "",
            f"{block['description'][0].upper()}{block['description'][1:]}; capacity "
            f"{block['capacity_rps']:.2f} req/s.",
            "",
            "| load | offered | system | goodput req/s | vs no prefix | attainment offered | "
            "admitted | TTFT p50 ms | TTFT p99 ms | hit rate | rejected |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for load, rows in block["results"].items():
            base = rows.get("sluice_no_prefix", {}).get("goodput_rps")
            for name, row in rows.items():
                ratio = row["goodput_rps"] / base if base else None
                lines.append(
                    f"| {load}x | {row['offered_load']:.2f}x | {LABELS[name]} | "
                    f"{row['goodput_rps']:.2f} | "
                    f"{_fmt(ratio, '.2f')} | {row['attainment_offered']:.3f} | "
                    f"{_fmt(row['attainment_admitted'], '.3f')} | "
                    f"{_fmt(row['ttft_p50_ms'], '.0f')} | {_fmt(row['ttft_p99_ms'], '.0f')} | "
                    f"{row['hit_rate']:.3f} | {row['rejection_rate']:.3f} |"
                )
        ceiling_lines = _ceiling_lines(block)
        lines += ["", *ceiling_lines] if ceiling_lines else []
    http = data.get("http")
    if http is not None:
        lines += [
            "",
            "## Over HTTP, with the cache-aware peers",
            "",
            f"{http['description'][0].upper()}{http['description'][1:]}; capacity "
            f"{http['capacity_rps']:.2f} req/s in modelled time; `offered` is the requests "
            "counted over their span, per system. Times below are modelled "
            "(measured / dilation).",
            "",
            "| load | offered | system | goodput req/s | vs best peer | attainment offered | "
            "admitted | TTFT p50 ms | TTFT p99 ms | hit rate | rejected | failed |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for load, rows in http["results"].items():
            peers = [rows[p]["goodput_rps"] for p in CACHE_AWARE if p in rows]
            best = max(peers) if peers else None
            for name, row in rows.items():
                ratio = row["goodput_rps"] / best if best else None
                lines.append(
                    f"| {load}x | {row['offered_load']:.2f}x | {HTTP_LABELS[name]} | "
                    f"{row['goodput_rps']:.2f} | "
                    f"{_fmt(ratio, '.2f')} | {row['attainment_offered']:.3f} | "
                    f"{_fmt(row['attainment_admitted'], '.3f')} | "
                    f"{_fmt(row['ttft_p50_ms'], '.0f')} | {_fmt(row['ttft_p99_ms'], '.0f')} | "
                    f"{row['hit_rate']:.3f} | {row['rejection_rate']:.3f} | {row['failed']} |"
                )
    lines += ["", "## Targets", "", *verdicts(data), *http_verdicts(data), ""]
    if http is None:
        lines += [
            "Not in this run: vllm-router's and SMG's cache-aware policies (`--http`).",
            "",
        ]
    lines += ["Command: `python -m bench.prefix" + (" --http`." if http else "`."), ""]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(data["traces"])
    figure, axes = plt.subplots(len(traces), 2, figsize=(10, 4 * len(traces)), squeeze=False)
    for row_axes, trace in zip(axes, traces, strict=True):
        results = data["traces"][trace]["results"]
        loads = list(results)
        for name in SYSTEMS:
            if not all(name in results[x] for x in loads):
                continue
            row_axes[0].plot(
                loads, [results[x][name]["goodput_rps"] for x in loads], "-o", label=LABELS[name]
            )
            row_axes[1].plot(
                loads, [results[x][name]["hit_rate"] for x in loads], "-o", label=LABELS[name]
            )
        row_axes[0].set_title(f"{trace}: goodput")
        row_axes[1].set_title(f"{trace}: fleet prefix hit rate")
        for axis in row_axes:
            axis.set_xlabel("load (x capacity)")
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


HTTP_SYSTEMS = ["sluice_prefix", "sluice_no_prefix", *CACHE_AWARE, "direct"]
HTTP_DEFAULT = ["sluice_prefix", *CACHE_AWARE]  # the targets' comparison; the rest by choice
HTTP_LABELS = {
    **LABELS,
    "direct": "direct (client round-robin)",
    **{name: PEER_LABELS[name] for name in CACHE_AWARE},
}


async def _prefix_counters(http: aiohttp.ClientSession, urls: list[str]) -> tuple[float, float]:
    """The fleet's prefix-cache queries and hits so far (tokens), from the servers' metrics."""
    queries = hits = 0.0
    for url in urls:
        async with http.get(url + "/metrics") as response:
            for line in (await response.text()).splitlines():
                if line.startswith("vllm:prefix_cache_queries_total{"):
                    queries += float(line.rsplit(" ", 1)[1])
                elif line.startswith("vllm:prefix_cache_hits_total{"):
                    hits += float(line.rsplit(" ", 1)[1])
    return queries, hits


def _sluice_config(urls: list[str], dilation: float, *, prefix: bool) -> dict[str, Any]:
    config = gateway_config(urls, "iv_full", dilation)
    config["scheduler"]["prefix_aware"] = prefix
    return config


async def http_system(
    name: str, items: list[Planned], args: argparse.Namespace, capacity_rps: float
) -> dict[str, Any]:
    """One system over real sockets in front of a fresh simulated fleet, time dilated."""
    dilation = args.dilation
    sim_args = [
        "--servers",
        str(BACKENDS),
        "--profile",
        PROFILE,
        "--model",
        HTTP_MODEL,
        "--slowdown",
        str(dilation),
        "--lengths",
        "none",
        "--enable-prompt-tokens-details",
        "--seed",
        "7",
    ]
    started = time.monotonic()
    async with sim_fleet(sim_args) as urls:
        fleet = PeerFleet(urls, HTTP_MODEL)
        system = "sluice" if name.startswith("sluice") else name
        config = _sluice_config(urls, dilation, prefix=name == "sluice_prefix")
        with tempfile.TemporaryDirectory() as workdir:
            async with running(
                system, fleet, Path(workdir), sluice_config=config, sluice_env=dilated_env(dilation)
            ) as targets:
                async with aiohttp.ClientSession() as http:
                    before = await _prefix_counters(http, urls)
                outcome = await run_open_loop(
                    targets, HTTP_MODEL, items, client_headers(), extra={"ignore_eos": True}
                )
                async with aiohttp.ClientSession() as http:
                    after = await _prefix_counters(http, urls)
    counted, span = measured(items, outcome)
    span /= dilation
    summary = summarize(counted, dilation, span)
    summary["offered_load"] = len(counted) / span / capacity_rps
    queries, hits = after[0] - before[0], after[1] - before[1]
    summary["hit_rate"] = hits / queries if queries else 0.0
    ttfts = [r.ttft_s / dilation * 1000 for r in counted if r.status == 200 and r.ttft_s]
    summary["ttft_p50_ms"] = percentile(ttfts, 50)
    summary["wall_s"] = round(time.monotonic() - started, 1)
    return summary


def dilated(items: list[Planned], dilation: float) -> list[Planned]:
    """The same items with their times stretched ``dilation`` times (followers kept)."""
    out: dict[int, Planned] = {}
    for item in items:  # a turn comes after the one it follows
        follows = out[id(item.follows)] if item.follows is not None else None
        out[id(item)] = replace(item, at=item.at * dilation, follows=follows)
    return list(out.values())


async def http_part(args: argparse.Namespace) -> dict[str, Any]:
    # Measured on a set of the same turns large enough to saturate a server.
    reference = sharegpt_turns(2000, args.http_max_tokens)
    fleet = capacity([s for c in reference for s in c]) * BACKENDS
    print(f"http sharegpt: capacity {fleet:.2f} req/s (modelled time)", flush=True)
    results: dict[str, dict[str, Any]] = {}
    sizes: dict[str, int] = {}
    for load in args.http_loads:
        # As many turns as keep conversations starting for the window at this load.
        conversations = sharegpt_turns(int(load * fleet * args.http_window_s), args.http_max_tokens)
        planned = conversation_load(
            conversations, load * fleet, seed=int(load * 100), think_s=HTTP_THINK_S
        )
        sizes[f"{load:g}"] = len(planned)
        items = dilated(planned, args.dilation)
        for name in args.http_systems:
            row = await http_system(name, items, args, fleet)
            results.setdefault(f"{load:g}", {})[name] = row
            print(
                f"http {load:g}x {name}: goodput {row['goodput_rps']:.2f} req/s, attainment "
                f"{row['attainment_offered']:.3f}/{row['attainment_admitted'] or 0:.3f}, hit rate "
                f"{row['hit_rate']:.3f}, TTFT p50 {row['ttft_p50_ms'] or 0:.0f} ms, offered "
                f"{row['offered_load']:.2f}x, failed {row['failed']} ({row['wall_s']} s)",
                flush=True,
            )
    turns = ", ".join(f"{n} at {load}x" for load, n in sizes.items())
    return {
        "description": f"ShareGPT conversations as in the virtual run ({turns} turns, "
        f"conversations starting for {args.http_window_s:g} s), over real sockets: a "
        "simulated fleet process (prefix caching "
        f"on, cached tokens reported) and the system in front of it, time dilated "
        f"{args.dilation:g}x (engine steps, SLOs, think time and Sluice's priors alike); "
        f"replies of the true length up to {args.http_max_tokens} tokens (ignore_eos); "
        f"each turn sent {HTTP_THINK_S:g} s after the last one's answer; figures count the "
        "turns sent in the steady part, as in the virtual run",
        "requests": sizes,
        "capacity_rps": fleet,
        "dilation": args.dilation,
        "results": results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--traces", nargs="+", default=[*TRACES], choices=TRACES)
    parser.add_argument(
        "--conversation-turns", type=int, default=12_000, help="ShareGPT turns, in all"
    )
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, default=REPORTS)
    parser.add_argument("--http", action="store_true", help="also the peers, over HTTP")
    parser.add_argument(
        "--http-window-s",
        type=float,
        default=18.0,
        help="modelled seconds over which conversations start (figures: its last two thirds)",
    )
    parser.add_argument("--http-loads", type=float, nargs="+", default=[0.5, 1.0, 1.5])
    parser.add_argument("--http-max-tokens", type=int, default=128)
    parser.add_argument("--http-systems", nargs="+", default=HTTP_DEFAULT, choices=HTTP_SYSTEMS)
    parser.add_argument("--dilation", type=float, default=12.0)
    args = parser.parse_args()
    data = run(args)
    if args.http:
        data["http"] = asyncio.run(http_part(args))
    publish(args.out, "prefix", data, markdown(data), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
