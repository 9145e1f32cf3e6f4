"""The gateways Sluice is compared with, each installed on demand in a venv of its own under
``.peers/`` (ignored by git), and started as a child process in front of a fleet.

Launch flags follow each project's documentation: vllm-router and SMG route over the given
worker URLs with retries off; LiteLLM's proxy gets one ``model_list`` entry per backend under
the same model name and the ``least-busy`` strategy. "direct" runs nothing: the client itself
round-robins over the backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.procs import free_port, gateway

ROOT = Path(__file__).resolve().parent.parent / ".peers"
LITELLM_KEY = "sk-sluice-bench"  # the proxy refuses to start without a master key


@dataclass(frozen=True, slots=True)
class Fleet:
    urls: list[str]
    model: str


# What a system needs to start: its command line and environment, from the fleet, a free port
# and a scratch folder.
Launcher = Callable[[Fleet, int, Path], tuple[list[str], dict[str, str]]]


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    label: str
    package: str  # what pip installs
    binary: str  # the command in the venv's bin/
    launch: Launcher

    @property
    def venv(self) -> Path:
        return ROOT / self.package.split("[")[0]

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / self.binary


def _vllm_router(policy: str) -> Launcher:
    def launch(fleet: Fleet, port: int, _work: Path) -> tuple[list[str], dict[str, str]]:
        return [
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--worker-urls",
            *fleet.urls,
            "--policy",
            policy,
            "--disable-retries",
            "--disable-circuit-breaker",
            "--prometheus-port",
            str(free_port()),
            "--log-level",
            "warning",
        ], {}

    return launch


def _smg(policy: str) -> Launcher:
    def launch(fleet: Fleet, port: int, _work: Path) -> tuple[list[str], dict[str, str]]:
        return [
            "launch",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--worker-urls",
            *fleet.urls,
            "--backend",
            "vllm",
            "--policy",
            policy,
            "--disable-retries",
            "--prometheus-port",
            str(free_port()),
            "--log-level",
            "warn",
        ], {}

    return launch


def _litellm(fleet: Fleet, port: int, work: Path) -> tuple[list[str], dict[str, str]]:
    config = {
        "model_list": [
            {
                "model_name": fleet.model,
                "litellm_params": {
                    "model": f"openai/{fleet.model}",
                    "api_base": f"{url}/v1",
                    "api_key": "unused",
                },
            }
            for url in fleet.urls
        ],
        "router_settings": {"routing_strategy": "least-busy", "num_retries": 0},
        "litellm_settings": {"request_timeout": 600},
    }
    path = work / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"LITELLM_MASTER_KEY": LITELLM_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return ["--config", str(path), "--host", "127.0.0.1", "--port", str(port)], env


PEERS = {
    p.name: p
    for p in (
        Peer(
            "vllm-router-rr",
            "vllm-router round_robin",
            "vllm-router",
            "vllm-router",
            _vllm_router("round_robin"),
        ),
        Peer(
            "vllm-router-p2",
            "vllm-router power_of_two",
            "vllm-router",
            "vllm-router",
            _vllm_router("power_of_two"),
        ),
        Peer("smg-least-load", "SMG least_load", "smg", "smg", _smg("least_load")),
        Peer(
            "vllm-router-cache",
            "vllm-router cache_aware",
            "vllm-router",
            "vllm-router",
            _vllm_router("cache_aware"),
        ),
        Peer("smg-cache", "SMG cache_aware", "smg", "smg", _smg("cache_aware")),
        Peer("litellm-least-busy", "LiteLLM least-busy", "litellm[proxy]", "litellm", _litellm),
    )
}
LABELS = {"sluice": "Sluice (full guards)", "direct": "direct (client round-robin)"} | {
    name: p.label for name, p in PEERS.items()
}
CACHE_AWARE = ["vllm-router-cache", "smg-cache"]  # bench.prefix's peers
SYSTEMS = ["sluice", *(p for p in PEERS if p not in CACHE_AWARE), "direct"]


def install(peer: Peer) -> Path:
    """Create the peer's venv and install it there, once; return its executable."""
    if peer.executable.exists():
        return peer.executable
    print(f"installing {peer.package} into {peer.venv} ...", flush=True)
    shutil.rmtree(peer.venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(peer.venv)], check=True)
    subprocess.run(
        [str(peer.venv / "bin" / "pip"), "install", "-q", peer.package],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return peer.executable


async def _wait_ready(url: str, process: asyncio.subprocess.Process, timeout_s: float) -> None:
    """Until the system answers a tiny completion (routers may take a moment to see workers)."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {LITELLM_KEY}"}
    async with aiohttp.ClientSession() as http:
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"{url}: exited with {process.returncode} before it was ready")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(
                    url + "/v1/models", headers=headers, timeout=aiohttp.ClientTimeout(total=2)
                ) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready within {timeout_s:g}s")
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def running(
    name: str,
    fleet: Fleet,
    work: Path,
    *,
    sluice_config: dict[str, Any] | None = None,
    sluice_env: dict[str, str] | None = None,
    pin: str | None = None,
) -> AsyncIterator[list[str]]:
    """Start system ``name`` in front of ``fleet``; yield the URLs a client should use (one
    for a gateway, the backends themselves for "direct"). ``pin``: a CPU list for taskset."""
    if name == "direct":
        yield fleet.urls
        return
    prefix = ["taskset", "-c", pin] if pin else []
    if name == "sluice":
        assert sluice_config is not None
        env = {**os.environ, **(sluice_env or {})}
        async with gateway(sluice_config, work, env=env, prefix=prefix) as url:
            yield [url]
        return
    peer = PEERS[name]
    executable = await asyncio.to_thread(install, peer)
    port = free_port()
    args, env = peer.launch(fleet, port, work)
    log = (work / f"{name}.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        *prefix,
        str(executable),
        *args,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_ready(url, process, timeout_s=120)
        yield [url]
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
            try:
                await asyncio.wait_for(process.wait(), timeout=15)
            except TimeoutError:
                os.killpg(process.pid, 9)
                await process.wait()
        log.close()


def client_headers() -> dict[str, str]:
    """Sent to every system alike: LiteLLM needs its key, the others ignore it."""
    return {"Authorization": f"Bearer {LITELLM_KEY}"}
