"""Graceful shutdown of a real ``sluice serve`` process: SIGTERM with streams in flight."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import yaml

from bench.procs import sim_fleet
from gateway.state.redis_store import RedisStore

TOKENS = 40


async def _stream(http: aiohttp.ClientSession, url: str, started: asyncio.Event) -> list[str]:
    body = {"model": "m", "prompt": "p", "max_tokens": TOKENS, "ignore_eos": True, "stream": True}
    texts: list[str] = []
    async with http.post(url + "/v1/completions", json=body) as response:
        assert response.status == 200
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                texts.append("[DONE]")
                break
            event = json.loads(data)
            assert "error" not in event, event
            texts.append(event["choices"][0]["text"])
            started.set()
    return texts


async def test_sigterm_fails_ready_finishes_streams_and_gives_leases_back(
    tmp_path: Path, redis_url: str
) -> None:
    prefix = "shutdown-test"
    # About 50 ms a token: each stream runs about 2 s.
    async with sim_fleet(["--servers", "1", "--model", "m", "--slowdown", "8"]) as urls:
        config = tmp_path / "sluice.yaml"
        config.write_text(yaml.safe_dump({"backends": [{"name": "b0", "url": urls[0]}]}))
        env = {
            **os.environ,
            "SLUICE_REDIS_URL": redis_url,
            "SLUICE_REDIS_PREFIX": prefix,
            "SLUICE_SHUTDOWN_DELAY_S": "1",
            "SLUICE_SHUTDOWN_GRACE_S": "20",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", "0",
            "--log-level", "WARNING", stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
            url = line.decode().strip().rsplit(" ", 1)[1]
            async with aiohttp.ClientSession() as http:
                events = [asyncio.Event() for _ in range(3)]
                streams = [asyncio.create_task(_stream(http, url, e)) for e in events]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), timeout=30)
                process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                async with http.get(url + "/ready") as response:
                    assert response.status == 503
                    assert (await response.json())["error"]["code"] == "draining"
                done = await asyncio.wait_for(asyncio.gather(*streams), timeout=60)
            # None was cut: every stream got all its tokens and its [DONE].
            assert [texts[-1] for texts in done] == ["[DONE]"] * 3
            assert [len(texts) - 1 for texts in done] == [TOKENS] * 3
            assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    store = RedisStore(redis_url, prefix=prefix)
    try:
        assert (await store.load_totals("b0")).count == 0  # given back, not left to lapse
    finally:
        await store.close()
