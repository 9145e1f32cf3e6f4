"""Benchmark of macro instances with rolling prefill activation (issue: macro instances).

Eight simulated Llama-3.1-8B/H100 servers. Arrivals follow the Azure conversation trace,
rescaled to 1x, 1.5x, 2x and 3x the fleet's capacity for this mix; most prompts are ShareGPT's with
their real reply lengths, and a share are long-prompt conversations from the Mooncake trace
(input and output lengths from the trace: a mean near 12k prompt tokens). SLO classes are
drawn uniformly from SCORPIO's six. The same arrivals go to each placement:
  * least-loaded forwarding, no gateway queue;
  * the guards with their own placement (least budget used);
  * the guards with rolling activation in two macro instances of four (pool bounds 2..4);
  * the guards with rolling activation in one macro instance of eight.
All run the gateway's own scheduler, policies, online latency models and length predictor in
virtual time against the simulator's engine model (bench.virtual_gateway).
Writes bench/reports/macro.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

from bench.data import PromptSample, data_file, load_sharegpt, open_text
from bench.guards import capacity_per_backend, plot_by_load, result_rows, run_config
from bench.publish import REPORTS, publish
from bench.sim.profiles import PROFILES
from bench.workload import azure_gaps, scorpio_load
from gateway.config import GatewayConfig
from gateway.scheduling.macro import instance_ids, with_layout
from predictor import artifact

BACKENDS = 8
MAX_MODEL_LEN = 32_000
PROFILE = "llama8b-h100"
ROLLING = ("rolling_2x4", "rolling_1x8")
TIGHT_CLASSES = ("s1", "s4")
DEFAULT_LOADS = [1.0, 1.5, 2.0, 3.0]

CONFIGS: dict[str, dict[str, Any]] = {
    "least_loaded": {"scheduler": {"policy": "least_loaded"}, "max_in_flight": 100_000},
    "guards": {"scheduler": {}, "max_in_flight": 256},
    "rolling_2x4": {
        "scheduler": {"placement": "rolling"},
        "max_in_flight": 256,
        "pool": {"min_size": 2, "max_size": 4},
    },
    "rolling_1x8": {
        "scheduler": {"placement": "rolling"},
        "max_in_flight": 256,
        "pool": {"min_size": 1, "max_size": 8},
    },
}
LABELS = {
    "least_loaded": "least-loaded, no queue",
    "guards": "guards, own placement",
    "rolling_2x4": "guards + rolling, 2 instances of 4",
    "rolling_1x8": "guards + rolling, 1 instance of 8",
}


def mooncake(limit: int | None = None) -> list[PromptSample]:
    """Mooncake conversation requests that fit the engine's context, as prompt samples: a
    stand-in text of the right length (about 4 characters a token, as the gateway counts)."""
    samples = []
    with open_text(data_file("traces/mooncake_conversation_trace.jsonl")) as lines:
        for number, line in enumerate(lines):
            row = json.loads(line)
            prompt, output = int(row["input_length"]), int(row["output_length"])
            if prompt + output > MAX_MODEL_LEN:
                continue
            text = f"conversation {number}: " + "word" * prompt
            samples.append(PromptSample(f"mooncake-{number}", text, prompt, output))
            if limit is not None and len(samples) >= limit:
                break
    return samples


def layout(pool: dict[str, int] | None) -> dict[str, tuple[str, int]] | None:
    """Backend -> (macro instance, place in its cycle), by the gateway's own mitosis rules."""
    if pool is None:
        return None
    config = GatewayConfig.model_validate(
        {
            "pools": {"default": pool},
            "backends": [
                {"name": f"b{i}", "url": f"http://127.0.0.1:{9000 + i}"} for i in range(BACKENDS)
            ],
        }
    )
    return instance_ids(with_layout(config))


def mixed(short: list[PromptSample], long: list[PromptSample], share: float, seed: int) -> Any:
    """Draw each request from the long set with probability ``share``."""
    rng = random.Random(seed)
    return lambda: rng.choice(long) if rng.random() < share else rng.choice(short)


def run(args: argparse.Namespace) -> dict[str, Any]:
    short = [s for s in load_sharegpt() if s.prompt_tokens < 6000]
    long = mooncake(limit=3000)
    draw = mixed(short, long, args.long_share, seed=11)
    population = [draw() for _ in range(6000)]
    per_backend = capacity_per_backend(population, args.max_tokens)
    capacity = per_backend * BACKENDS
    lengths = artifact.load().model
    print(f"capacity: {per_backend:.2f} req/s per server, {capacity:.1f} for the fleet", flush=True)
    gaps = azure_gaps()
    results: dict[str, dict[str, Any]] = {}
    for load in args.loads:
        items = scorpio_load(
            population, gaps, args.requests, load * capacity, load=load, max_tokens=args.max_tokens
        )
        long_items = sum(item.sample.conversation.startswith("mooncake") for item in items)
        for name in args.configs:
            spec = CONFIGS[name]
            summary = run_config(
                items,
                spec,
                items[-1].at,
                lengths,
                backends=BACKENDS,
                instances=layout(spec.get("pool")),
            )
            summary["long_prompt_requests"] = long_items
            results.setdefault(f"{load:g}", {})[name] = summary
            print(
                f"load {load:g}x {name}: goodput {summary['goodput_rps']:.1f} req/s, attainment "
                f"{summary['attainment_offered']:.3f} offered / "
                f"{summary['attainment_admitted'] or 0:.3f} admitted, p99 TTFT "
                f"{summary['ttft_p99_ms'] or 0:.0f} ms, p99 TPOT {summary['tpot_p99_ms'] or 0:.1f}"
                f" ms ({summary['wall_s']} s)",
                flush=True,
            )
    return {
        "benchmark": "macro_instances",
        "mode": "virtual time (gateway scheduling code + engine model)",
        "backends": BACKENDS,
        "profile": PROFILE,
        "requests_per_run": args.requests,
        "long_share": args.long_share,
        "max_tokens": args.max_tokens,
        "capacity_rps": capacity,
        "results": results,
    }


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# Macro instances: rolling prefill activation against the guards' own placement",
        "",
        f"Mode: {data['mode']}. {data['backends']} simulated Llama-3.1-8B/H100 servers; "
        f"fleet capacity {data['capacity_rps']:.1f} req/s for this mix (engine model, "
        f"saturated). {data['requests_per_run']} requests per run: Azure conversation-trace "
        f"arrivals rescaled to each load; {100 * data['long_share']:.0f}% of requests are "
        "Mooncake conversation requests (trace input and output lengths, up to 32k tokens in "
        "all), the rest ShareGPT prompts with their real reply lengths; replies capped at "
        f"{data['max_tokens']} tokens; SCORPIO's six SLO classes drawn uniformly. Latencies in "
        "ms of the modelled GPUs' time. Every load comes from this one run (same code, "
        "arrivals generator and seed).",
        "",
        "![macro](macro.png)",
        "",
        "| load | placement | goodput req/s | vs guards | attain. offered | attain. admitted "
        "| p99 TTFT ms | p99 TPOT ms | rejected |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += result_rows(
        data["results"], LABELS, "guards", lambda row: f"{row['rejection_rate']:.3f}"
    )
    lines += ["", *findings(data), "", f"Command: `{_command(data)}`."]
    return "\n".join(lines) + "\n"


def _command(data: dict[str, Any]) -> str:
    loads = [float(load) for load in data["results"]]
    if loads == DEFAULT_LOADS:
        return "python -m bench.macro"
    return "python -m bench.macro --loads " + " ".join(f"{load:g}" for load in loads)


def _rolling(runs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, runs[name]) for name in ROLLING if name in runs]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def findings(data: dict[str, Any]) -> list[str]:
    """What the table says, rolling activation against the guards' own placement, each
    figure and each comparison word computed from this run's results."""
    results: dict[str, dict[str, Any]] = data["results"]
    compared = {load: runs for load, runs in results.items() if "guards" in runs and _rolling(runs)}
    if not compared:
        return []
    out = ["## What the numbers say", "", "Against the guards' own placement, same arrivals:", ""]
    gaps = [
        abs(row["goodput_rps"] / runs["guards"]["goodput_rps"] - 1)
        for runs in compared.values()
        for _, row in _rolling(runs)
        if runs["guards"]["goodput_rps"]
    ]
    per_load = "; ".join(
        f"{load}x: "
        + ", ".join(f"{row['goodput_rps']:.1f}" for _, row in _rolling(runs))
        + f" against {runs['guards']['goodput_rps']:.1f}"
        for load, runs in compared.items()
    )
    names = " and ".join(
        LABELS[name] for name in ROLLING if any(name in r for r in compared.values())
    )
    out.append(
        f"- Goodput with rolling ({names}) is within {_pct(max(gaps))} of the guards' at "
        f"every load ({per_load} req/s), from one seed."
    )
    for metric, label in (
        ("attainment_admitted", "Attainment over admitted requests"),
        ("tpot_p99_ms", "p99 TPOT"),
        ("ttft_p99_ms", "p99 TTFT"),
    ):
        out.append(
            f"- {label}: "
            + "; ".join(_versus(load, runs, metric) for load, runs in compared.items())
            + "."
        )
    tight = next((load for load in ("2", *compared) if load in compared), None)
    if tight is not None:
        runs = compared[tight]
        cells = []
        for name, row in [("guards", runs["guards"]), *_rolling(runs)]:
            per_class = row.get("per_class", {})
            shares = [
                _pct(per_class[c]["good"] / per_class[c]["offered"])
                for c in TIGHT_CLASSES
                if per_class.get(c, {}).get("offered")
            ]
            cells.append(f"{LABELS[name]} {' / '.join(shares)}")
        out.append(
            f"- The tight 0.5 s classes {' and '.join(TIGHT_CLASSES)} at {tight}x (attainment "
            f"over offered): {'; '.join(cells)} (`per_class` in macro.json)."
        )
    out += ["", *_capacity_note(data)]
    return out


def _versus(load: str, runs: dict[str, Any], metric: str) -> str:
    base = runs["guards"][metric]
    parts = []
    for name, row in _rolling(runs):
        value = row[metric]
        if value is None or base is None:
            parts.append(f"{LABELS[name]} -")
            continue
        if metric.startswith("attainment"):
            shown, ref = _pct(value), _pct(base)
        else:
            digits = 0 if metric.startswith("ttft") else 1
            shown, ref = f"{value:.{digits}f} ms", f"{base:.{digits}f} ms"
        if round(value, 3) == round(base, 3):
            word = "same as"
        else:
            word = "higher than" if value > base else "lower than"
        parts.append(f"{shown} ({word} {ref})")
    return f"{load}x: " + ", ".join(parts)


def _capacity_note(data: dict[str, Any]) -> list[str]:
    profile = PROFILES[data.get("profile", PROFILE)]
    results = data["results"]
    lines = [
        "**Why rolling cannot win much here.** A gateway only chooses where and when a request "
        "goes; vLLM still mixes each new prefill into the running batch of the server that "
        f"receives it (chunked prefill, {profile.max_num_batched_tokens} tokens a step in this "
        "engine model). Rolling activation concentrates that interference on the active server "
        "instead of removing it (the others' decodes run cleaner, the active one's prefills "
        "wait), and VBS admission already bounds decode slow-down on every server.",
        "",
    ]
    least = [
        f"{load}x {_pct(runs['least_loaded']['attainment_offered'])}"
        for load, runs in results.items()
        if "least_loaded" in runs
    ]
    guards = [
        f"{load}x {_pct(runs['guards']['attainment_offered'])}"
        for load, runs in results.items()
        if "guards" in runs
    ]
    lines.append(
        "**The capacity figure** is the engine model's completion rate saturated with this mix "
        "and nothing in front of it; with long Mooncake prompts a saturated engine spends much "
        f"of its time preempting and recomputing (each server's KV cache holds "
        f"{profile.kv_tokens} tokens), so it is low for a gateway that admits only what fits. "
        f"Attainment over offered, least-loaded forwarding: {', '.join(least)}; the guards: "
        f"{', '.join(guards)}."
    )
    return lines


def plot(data: dict[str, Any], path: Path) -> None:
    plot_by_load(data["results"], LABELS, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loads", type=float, nargs="+", default=DEFAULT_LOADS)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--long-share", type=float, default=0.1)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, default=REPORTS)
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from the saved macro.json"
    )
    args = parser.parse_args()
    data = json.loads((args.out / "macro.json").read_text()) if args.report_only else run(args)
    publish(args.out, "macro", data, markdown(data), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
