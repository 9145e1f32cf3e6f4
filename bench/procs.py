"""Starting the simulator and the gateway as child processes, and stopping them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import yaml


async def _first_line(process: asyncio.subprocess.Process, what: str) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
    if not line:
        raise RuntimeError(f"{what} exited before it was ready (code {await process.wait()})")
    return line.decode().strip()


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=15)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def sim_fleet(args: Sequence[str]) -> AsyncIterator[list[str]]:
    """Run ``sluice-sim`` with ``args``; yield the servers' URLs."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.sim.cli", *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        urls: list[str] = json.loads(await _first_line(process, "the simulator"))["servers"]
        yield urls
    finally:
        await _stop(process)


@contextlib.asynccontextmanager
async def gateway(
    config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None
) -> AsyncIterator[str]:
    """Run ``sluice serve`` on a free port with ``config``; yield its base URL."""
    path = workdir / "sluice.yaml"
    path.write_text(yaml.safe_dump(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--config",
        str(path),
        "--port",
        "0",
        "--log-level",
        "WARNING",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        yield (await _first_line(process, "the gateway")).rsplit(" ", 1)[1]
    finally:
        await _stop(process)
