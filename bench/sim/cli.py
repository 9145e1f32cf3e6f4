"""``sluice-sim``: run a simulated vLLM fleet until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence

from bench.sim.fleet import start_fleet
from bench.sim.profiles import PROFILES, get_profile


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice-sim", description="simulated vLLM servers")
    parser.add_argument("--servers", type=int, default=4, help="how many servers (default 4)")
    parser.add_argument("--profile", default="llama8b-h100", choices=sorted(PROFILES))
    parser.add_argument("--model", default="sim-model", help="served model name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--base-port", type=int, default=0, help="first port; 0 picks free ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mean-output-tokens", type=float, default=200.0)
    parser.add_argument("--priority-scheduling", action="store_true")
    parser.add_argument("--max-queued", type=int, default=None)
    parser.add_argument("--slowdown", type=float, default=1.0, help="scale every step time")
    return parser


async def _run(args: argparse.Namespace) -> None:
    profile = get_profile(args.profile).scaled(args.slowdown)
    fleet = await start_fleet(
        [profile] * args.servers,
        model=args.model,
        seed=args.seed,
        host=args.host,
        base_port=args.base_port,
        mean_output_tokens=args.mean_output_tokens,
        priority_scheduling=args.priority_scheduling,
        max_queued=args.max_queued,
    )
    # One JSON line, so that a parent process learns the ports.
    print(json.dumps({"servers": [sim.url for sim in fleet], "model": args.model}), flush=True)
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
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
