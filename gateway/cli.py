"""The ``sluice`` command.

The server's modules are imported when ``serve`` runs, so that ``sluice admin`` and
``sluice predictor`` start quickly."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import admin_cli
from predictor import cli as predictor_cli

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.settings import Settings

log = logging.getLogger("sluice")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="SLO-aware gateway for vLLM")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="YAML or JSON file: SLO classes, backends")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on; 0 picks a free one")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    predictor_cli.add_commands(commands)
    admin_cli.add_commands(commands)
    return parser


# Python's default (700 allocations) runs a collection every few requests; the oldest
# generation, full of kept records and samples, then takes tens of ms. At 500 req/s on one
# core this raised the p99 added latency from about 5 ms to 50-70 ms (bench: compare overhead).
GC_THRESHOLDS = (50_000, 20, 100)


async def _serve(settings: Settings, config: GatewayConfig) -> None:
    from gateway.api.context import RUNTIME
    from gateway.app import build_app, start_server

    gc.set_threshold(*GC_THRESHOLDS)
    server = await start_server(build_app(settings, config), settings.host, settings.port)
    # One line on stdout, so that a parent process can learn the port it got.
    print(f"sluice listening on {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        # Graceful: fail readiness first (load balancers stop sending), then stop listening
        # and let in-flight streams finish within the grace period; leases are given back.
        runtime = server.runner.app[RUNTIME]
        runtime.draining = True
        log.info(
            "shutting down: /ready fails now, the listener closes in %gs, in-flight requests "
            "get %gs",
            settings.shutdown_delay_s,
            settings.shutdown_grace_s,
        )
        await asyncio.sleep(settings.shutdown_delay_s)
    finally:
        await server.stop()


def _run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "predictor":
        return predictor_cli.run(args)
    if args.command == "admin":
        return admin_cli.run(args)
    return _serve_command(args)


def _serve_command(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from gateway.config import GatewayConfig, load_config
    from gateway.settings import Settings
    from predictor import artifact

    overrides = {
        key: value
        for key, value in (
            ("config", args.config),
            ("host", args.host),
            ("port", args.port),
            ("log_level", args.log_level),
        )
        if value is not None
    }
    try:
        settings = Settings(**overrides)
        config = load_config(settings.config) if settings.config else GatewayConfig()
    except (ValidationError, OSError, ValueError) as exc:
        print(f"sluice: bad configuration: {exc}", file=sys.stderr)
        return 2
    try:
        artifact.load(settings.predictor_artifact or artifact.PACKAGED)
    except artifact.ArtifactError as exc:
        print(f"sluice: refusing the length model: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _run(_serve(settings, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
