"""What one Redis shard carries for Sluice, against what one gateway core serves, in one run.

Sluice's keys share one hash tag, so in a Redis Cluster they all live on one shard, and that
shard's one server thread is the bound. Per request the gateway makes two Redis calls, both
Lua scripts of ``gateway/state/redis_store.py``: the lease's admission (which totals the
backend's live leases) and its release; besides, every replica runs one lease sync per
``SLUICE_SHARED_SYNC_S`` over all backends.

The load is redis-benchmark-like: pre-encoded, pipelined EVALSHA commands on several raw
connections, so that the client is lighter per call than the server. The figure that does not
depend on the client keeping up is the server's own CPU time per request (admit + release),
read from ``/proc`` for the server process; one shard's capacity is one core divided by it.
Beside it, in the same run, the gateway's own rate on one core: closed-loop requests through
``sluice serve`` (pinned to one core) to a simulated backend with no modelled compute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis

from bench.procs import free_port, gateway, sim_fleet, start_redis
from bench.publish import REPORTS, publish
from gateway.state.keys import Keys
from gateway.state.scripts import ADMIT_LEASE, RELEASE_LEASE, SYNC_LEASES

MODEL = "shard-model"
WEIGHT = "1000 1200 50000"  # kv tokens, context, TPOT target µs: what a lease weighs


def _command(*parts: str | int) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fill(client: redis.Redis, keys: Keys, backends: int, leases: int) -> None:
    """``leases`` live leases on each of ``backends`` backends, as replicas would hold them."""
    admit = client.register_script(ADMIT_LEASE)
    for b in range(backends):
        for i in range(leases):
            admit(
                keys=[keys.lease_expiry(f"b{b}"), keys.lease_weights(f"b{b}")],
                args=[f"held:{i}", 600_000, WEIGHT, 100_000, -1, "1.3", "0.99",
                      "1e-9", "1e-9", "1e-9", "1e-9"],
            )  # fmt: skip


def _request_batch(keys: Keys, admit: str, release: str, backends: int, n: int, tag: str) -> bytes:
    """``n`` requests' worth of pipelined calls: admit a lease, release it."""
    out = []
    for i in range(n):
        b = f"b{i % backends}"
        lease_keys = (keys.lease_expiry(b), keys.lease_weights(b))
        lease = f"{tag}:{i}"
        out.append(_command("EVALSHA", admit, 2, *lease_keys, lease, 600_000, WEIGHT, 100_000,
                            -1, "1.3", "0.99", "1e-9", "1e-9", "1e-9", "1e-9"))  # fmt: skip
        out.append(_command("EVALSHA", release, 2, *lease_keys, lease))
    return b"".join(out)


# Each request's replies end in this many CRLFs: the admission's five-integer array (6) and
# the release's integer (1).
_CRLF_PER_REQUEST = 7


def _drive(port: int, batch: bytes, per_batch: int, seconds: float, connections: int) -> int:
    """Send ``batch`` over and over on ``connections`` sockets for ``seconds``; requests done."""
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    done = 0
    expected = per_batch * _CRLF_PER_REQUEST
    stop = time.monotonic() + seconds
    try:
        while time.monotonic() < stop:
            for sock in sockets:
                sock.sendall(batch)
            for sock in sockets:
                seen = 0
                while seen < expected:
                    chunk = sock.recv(1 << 20)
                    if not chunk or chunk[:1] == b"-":
                        raise RuntimeError(f"Redis answered {chunk[:200]!r}")
                    seen += chunk.count(b"\r\n")
                done += per_batch
    finally:
        for sock in sockets:
            sock.close()
    return done


def measure_shard(workdir: Path, leases: int, backends: int, seconds: float) -> dict[str, Any]:
    port = free_port()
    server = start_redis(workdir / f"shard-{leases}", port)
    try:
        client = redis.Redis(port=port)
        keys = Keys("bench")
        _fill(client, keys, backends, leases)
        admit = str(client.script_load(ADMIT_LEASE))
        release = str(client.script_load(RELEASE_LEASE))
        per_batch = 64
        batch = _request_batch(keys, admit, release, backends, per_batch, "run")
        _drive(port, batch, per_batch, 0.5, 4)  # warm up
        cpu0, wall0 = _cpu_seconds(server.pid), time.monotonic()
        requests = _drive(port, batch, per_batch, seconds, 4)
        cpu = _cpu_seconds(server.pid) - cpu0
        wall = time.monotonic() - wall0
        # One lease sync of one replica: every backend, its leases renewed and all totalled.
        sync = client.register_script(SYNC_LEASES)
        sync_keys = [keys.epoch]
        for b in range(backends):
            sync_keys += [keys.lease_expiry(f"b{b}"), keys.lease_weights(f"b{b}")]
        syncs, sync_cpu0 = 2000, _cpu_seconds(server.pid)
        for _ in range(syncs):
            sync(keys=sync_keys, args=[600_000, "", "epoch", *(["[]"] * backends)])
        sync_cpu = (_cpu_seconds(server.pid) - sync_cpu0) / syncs
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    per_request = cpu / requests
    return {
        "leases_per_backend": leases,
        "backends": backends,
        "requests": requests,
        "requests_per_s_driven": requests / wall,
        "server_cpu_share": cpu / wall,
        "server_cpu_us_per_request": per_request * 1e6,
        "shard_capacity_requests_per_s": 1.0 / per_request,
        "sync_server_cpu_us": sync_cpu * 1e6,
    }


async def gateway_core_rate(workdir: Path, seconds: float, concurrency: int) -> dict[str, Any]:
    """Closed-loop non-streamed requests through one gateway pinned to core 0; the simulated
    backend and this client on the other core."""
    pin_gateway = ["taskset", "-c", "0"] if (os.cpu_count() or 1) >= 2 else []
    pin_rest = ["taskset", "-c", "1"] if pin_gateway else []
    with contextlib.suppress(OSError):
        if pin_rest:
            os.sched_setaffinity(0, {1})
    sim_args = ["--servers", "1", "--profile", "instant", "--model", MODEL]
    async with sim_fleet(sim_args, prefix=pin_rest) as urls:
        config = {"backends": [{"name": "b0", "url": urls[0], "max_in_flight": 4096}]}
        async with gateway(config, workdir, prefix=pin_gateway) as url:
            body = {"model": MODEL, "prompt": "p", "max_tokens": 4, "ignore_eos": True}
            done = 0

            async def worker(stop: float) -> None:
                nonlocal done
                while time.monotonic() < stop:
                    async with http.post(url + "/v1/completions", json=body) as response:
                        await response.read()
                        if response.status == 200:
                            done += 1

            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                warm = time.monotonic() + 1.0
                await asyncio.gather(*(worker(warm) for _ in range(concurrency)))
                done = 0
                start = time.monotonic()
                await asyncio.gather(*(worker(start + seconds) for _ in range(concurrency)))
                wall = time.monotonic() - start
    return {"requests_per_s": done / wall, "concurrency": concurrency, "pinned": bool(pin_gateway)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        shards = []
        for leases in args.leases:
            row = measure_shard(workdir, leases, args.backends, args.seconds)
            print(row, flush=True)
            shards.append(row)
        core = asyncio.run(gateway_core_rate(workdir, args.seconds, args.concurrency))
        print(core, flush=True)
    return {
        "benchmark": "redis_shard",
        "seconds": args.seconds,
        "backends": args.backends,
        "shards": shards,
        "gateway_core": core,
        "sync_interval_s": 0.2,
    }


def markdown(data: dict[str, Any]) -> str:
    core = data["gateway_core"]["requests_per_s"]
    lines = [
        "# What one Redis shard carries for Sluice",
        "",
        f"One server thread (the Valkey server the tests use), {data['backends']} backends "
        "with the given number of live leases each; pipelined EVALSHA load on 4 connections "
        f"for {data['seconds']:g} s per row. Per request: the lease's admission and its "
        "release. *Server CPU per request* is read from /proc for the server process; a "
        "shard's capacity is one core over it. Beside it, in the same run: one `sluice serve` "
        f"pinned to one core, closed loop, {data['gateway_core']['concurrency']} concurrent "
        "non-streamed requests to a simulated backend with no modelled compute.",
        "",
        "| live leases per backend | driven req/s | server CPU share | server CPU µs / request "
        "| shard capacity, req/s | gateway cores one shard serves | one replica's lease sync, "
        "server CPU µs |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in data["shards"]:
        capacity = row["shard_capacity_requests_per_s"]
        lines.append(
            f"| {row['leases_per_backend']} | {row['requests_per_s_driven']:.0f} | "
            f"{100 * row['server_cpu_share']:.0f}% | {row['server_cpu_us_per_request']:.1f} | "
            f"{capacity:.0f} | {capacity / core:.1f} | {row['sync_server_cpu_us']:.0f} |"
        )
    interval = data["sync_interval_s"]
    lines += [
        "",
        f"Gateway, one core: **{core:.0f} req/s** (on the embedded store, its fastest: with "
        "Redis it does more per request, so the ratios above are the conservative side). "
        f"Each replica also syncs every {interval:g} s: {1 / interval:.0f} syncs/s of the "
        "cost in the last column.",
        "",
    ]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["shards"]
    leases = [r["leases_per_backend"] for r in rows]
    core = data["gateway_core"]["requests_per_s"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(leases, [r["shard_capacity_requests_per_s"] for r in rows], "o-", label="one shard")
    ax.axhline(core, color="tab:red", linestyle="--", label="one gateway core")
    ax.set(xscale="log", yscale="log", xlabel="live leases per backend",
           ylabel="Sluice requests / s", title="What one Redis shard carries")  # fmt: skip
    ax.set_xticks(leases, [str(n) for n in leases])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--backends", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPORTS)
    args = parser.parse_args()
    data = measure(args)
    publish(args.out, "redis_shard", data, markdown(data), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
