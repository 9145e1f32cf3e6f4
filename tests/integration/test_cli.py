"""The console scripts as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import aiohttp

SIM = [sys.executable, "-m", "bench.sim.cli"]
SLUICE = [sys.executable, "-m", "gateway"]


async def _first_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
    return line.decode().strip()


async def _stop(process: asyncio.subprocess.Process) -> int:
    process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.wait(), timeout=30)


async def test_sim_and_gateway_processes(tmp_path: Path) -> None:
    sim = await asyncio.create_subprocess_exec(
        *SIM, "--servers", "2", "--model", "m", stdout=asyncio.subprocess.PIPE
    )
    try:
        urls = json.loads(await _first_line(sim))["servers"]
        config = tmp_path / "sluice.yaml"
        backends = "\n".join(f"  - {{name: b{i}, url: '{u}'}}" for i, u in enumerate(urls))
        config.write_text(f"backends:\n{backends}\n")
        gateway = await asyncio.create_subprocess_exec(
            *SLUICE,
            "serve",
            "--config",
            str(config),
            "--port",
            "0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            line = await _first_line(gateway)
            assert line.startswith("sluice listening on http://127.0.0.1:")
            url = line.rsplit(" ", 1)[1]
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    url + "/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 2}
                ) as response,
            ):
                assert response.status == 200
                assert (await response.json())["usage"]["completion_tokens"] <= 2
        finally:
            assert await _stop(gateway) == 0
    finally:
        assert await _stop(sim) == 0


async def test_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("backends: [{name: a, url: 'not a url'}]\n")
    process = await asyncio.create_subprocess_exec(
        *SLUICE,
        "serve",
        "--config",
        str(config),
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert b"bad configuration" in stderr


async def test_bad_env_setting_exits_2() -> None:
    process = await asyncio.create_subprocess_exec(
        *SLUICE,
        "serve",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"SLUICE_QUEUE_TIMEOUT_S": "-1", "PATH": "/usr/bin:/bin"},
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert b"queue_timeout_s" in stderr
