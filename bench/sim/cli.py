"""``sluice-sim``: run a simulated vLLM fleet until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.data import data_file
from bench.sim.fleet import start_fleet
from bench.sim.lengths import LengthDistribution, LengthTable
from bench.sim.profiles import PROFILES, get_profile


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice-sim", description="simulated vLLM servers")
    parser.add_argument("--servers", type=int, default=4, help="how many servers (default 4)")
    parser.add_argument("--profile", default="llama8b-h100", choices=sorted(PROFILES))
    parser.add_argument("--model", default="sim-model", help="served model name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--base-port", type=int, default=0, help="first port; 0 picks free ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--lengths",
        type=Path,
        default=None,
        help="ShareGPT-format JSONL(.gz) whose prompts get their real reply lengths "
        "(default: the shared data set when present; 'none' to disable)",
    )
    parser.add_argument(
        "--output-dist",
        choices=("lognormal", "exponential"),
        default="lognormal",
        help="reply lengths of unknown prompts",
    )
    parser.add_argument("--mean-output-tokens", type=float, default=200.0)
    parser.add_argument(
        "--priority-scheduling",
        action="store_true",
        help="like vLLM's --scheduling-policy priority",
    )
    parser.add_argument(
        "--max-queued",
        type=int,
        default=None,
        help="like vLLM's --max-num-queued-reqs: 503 past it",
    )
    parser.add_argument(
        "--slowdown", type=float, default=1.0, help="multiply every step time (2 = half speed)"
    )
    parser.add_argument(
        "--no-enable-prefix-caching",
        dest="prefix_caching",
        action="store_false",
        help="like vLLM's flag: no automatic prefix caching (on by default, as in vLLM V1)",
    )
    parser.add_argument(
        "--enable-prompt-tokens-details",
        action="store_true",
        help="like vLLM's flag: usage.prompt_tokens_details.cached_tokens in replies",
    )
    parser.add_argument(
        "--max-loras", type=int, default=None, help="like vLLM's flag: LoRA adapters held at once"
    )
    parser.add_argument(
        "--lora-load-s", type=float, default=0.0, help="seconds a LoRA adapter's load takes"
    )
    parser.add_argument("--max-model-len", type=int, default=None, help="default: profile's")
    parser.add_argument(
        "--max-num-seqs", type=int, default=None, help="like vLLM's flag; default: profile's"
    )
    return parser


def _lengths(path: Path | None) -> LengthTable:
    if path is not None and str(path) == "none":
        return LengthTable()
    if path is not None:
        return LengthTable.from_sharegpt(path)
    try:
        return LengthTable.from_sharegpt(data_file("sharegpt_lengths.jsonl"))
    except FileNotFoundError:  # SLUICE_DATA_DIR names a folder without it: natural lengths
        return LengthTable()


async def _run(args: argparse.Namespace) -> None:
    profile = get_profile(args.profile).scaled(args.slowdown)
    limits = {"max_model_len": args.max_model_len, "max_num_seqs": args.max_num_seqs}
    profile = dataclasses.replace(profile, **{k: v for k, v in limits.items() if v is not None})
    lengths = await asyncio.to_thread(_lengths, args.lengths)
    fleet = await start_fleet(
        [profile] * args.servers,
        model=args.model,
        seed=args.seed,
        host=args.host,
        base_port=args.base_port,
        lengths=lengths,
        distribution=LengthDistribution(args.output_dist, args.mean_output_tokens),
        priority_scheduling=args.priority_scheduling,
        max_queued=args.max_queued,
        prefix_caching=args.prefix_caching,
        prompt_tokens_details=args.enable_prompt_tokens_details,
        max_loras=args.max_loras,
        lora_load_s=args.lora_load_s,
    )
    # One JSON line, so that a parent process learns the ports.
    print(
        json.dumps(
            {
                "servers": [sim.url for sim in fleet],
                "model": args.model,
                "profile": profile.name,
                "known_prompts": len(lengths),
            }
        ),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sim in fleet:
            await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.servers < 1:
        print("sluice-sim: --servers must be at least 1", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.run(_run(args))
    except ImportError:
        asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
