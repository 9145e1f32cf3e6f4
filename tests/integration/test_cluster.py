"""The shared store on a real Redis Cluster: three masters, one replica each, from the same
server binary the other tests use."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import aiohttp
import pytest

from bench.procs import RunningCluster, redis_cluster
from gateway.scheduling.latency import ItlParams
from gateway.state.load import AdmissionRule, LeaseWeight
from gateway.state.redis_store import RedisStore
from gateway.state.store import ModelBlob, StaleVersion, StoreUnavailable
from tests.conftest import MODEL, GatewayFactory, SimFactory, eventually

T = TypeVar("T")
WEIGHT = LeaseWeight(kv_tokens=100, context=50, tpot_s=0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


def _store(cluster: RunningCluster, prefix: str | None = None) -> RedisStore:
    # A generous call bound: a failover moves the slot within a few seconds.
    return RedisStore(cluster.url, prefix=prefix or f"c-{uuid.uuid4().hex[:8]}", call_timeout_s=2.0)


async def _retry(call: Callable[[], Awaitable[T]], within_s: float = 20.0) -> T:
    """A call that may fail while the cluster fails over: tried until it answers."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await call()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_config_cas_leases_and_predictor_sharing(cluster: RunningCluster) -> None:
    store = _store(cluster)
    try:
        assert await store.get_config() is None
        assert await store.put_config('{"a": 1}', expected_version=0) == 1
        with pytest.raises(StaleVersion):
            await store.put_config('{"a": 2}', expected_version=0)
        assert await store.put_config('{"a": 3}', expected_version=1) == 2
        got = await store.get_config()
        assert got is not None
        assert (got.version, got.payload) == (2, '{"a": 3}')

        rule = AdmissionRule(max_in_flight=2, kv_capacity=250, itl=ItlParams(0, 0.001, 0, 0.01))
        assert (await store.admit_lease("b0", "r1:1", WEIGHT, rule, 10.0)).admitted
        assert (await store.admit_lease("b0", "r2:1", WEIGHT, rule, 10.0)).admitted
        refused = await store.admit_lease("b0", "r2:2", WEIGHT, rule, 10.0)
        assert not refused.admitted  # in-flight bound, across "replicas"
        assert refused.totals.count == 2
        totals = await store.sync_leases({"b0": {"r1:1": WEIGHT}, "b1": {}}, 10.0)
        assert (totals["b0"].count, totals["b1"].count) == (2, 0)
        await store.release_lease("b0", "r1:1")
        assert (await store.load_totals("b0")).count == 1

        await store.push_samples(["x", "y", "z"], keep=2)
        assert await store.recent_samples() == ["y", "z"]
        blob = ModelBlob("v7", '{"m": 1}', b"\x00\x01weights")
        await store.put_model(blob)
        assert await store.model_version() == "v7"
        assert await store.get_model() == blob
    finally:
        await store.close()


async def test_config_changes_are_announced_across_the_cluster(cluster: RunningCluster) -> None:
    prefix = f"c-{uuid.uuid4().hex[:8]}"
    writer, watcher = _store(cluster, prefix), _store(cluster, prefix)
    try:
        await watcher.wait_for_change(0.01)  # subscribes
        waiting = asyncio.create_task(watcher.wait_for_change(20.0))
        await asyncio.sleep(0.2)
        start = time.monotonic()
        await writer.put_config("{}", expected_version=0)
        await asyncio.wait_for(waiting, timeout=20)
        assert time.monotonic() - start < 10  # woken by the announcement, not the timeout
    finally:
        await writer.close()
        await watcher.close()


def _owner(cluster: RunningCluster, key: str) -> int:
    """The port of the master that serves ``key``'s slot, as a live node sees it."""
    port = min(p for p, process in cluster.nodes.items() if process.poll() is None)
    slot = int(cluster.cli(port, "cluster", "keyslot", key).strip())
    for line in cluster.cli(port, "cluster", "nodes").splitlines():
        fields = line.split()
        if "master" not in fields[2] or "fail" in fields[2]:
            continue
        for span in fields[8:]:
            low, _, high = span.partition("-")
            if low.isdigit() and int(low) <= slot <= int(high or low):
                return int(fields[1].split(":")[1].split("@")[0])
    raise AssertionError(f"no master serves slot {slot}")


async def test_a_master_killed_and_failed_over_loses_no_config(cluster: RunningCluster) -> None:
    prefix = f"c-{uuid.uuid4().hex[:8]}"
    store = _store(cluster, prefix)
    try:
        version = 0
        for i in range(5):
            version = await store.put_config(json.dumps({"n": i}), expected_version=version)
        owner = _owner(cluster, store.keys.config)
        cluster.nodes[owner].send_signal(signal.SIGKILL)
        cluster.nodes[owner].wait(timeout=10)
        got = await _retry(store.get_config)
        assert got is not None
        assert (got.version, json.loads(got.payload)) == (5, {"n": 4})
        assert _owner(cluster, store.keys.config) != owner  # a replica took the slot
        # And it takes writes: the compare-and-set goes on from the same version.
        assert await _retry(lambda: store.put_config("{}", expected_version=5)) == 6
    finally:
        await store.close()


async def test_gateways_share_config_through_the_cluster(
    cluster: RunningCluster,
    make_sim: SimFactory,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    sim = await make_sim()
    settings = {"redis_url": cluster.url, "redis_prefix": f"g-{uuid.uuid4().hex[:8]}"}
    first = await make_gateway([sim], settings=settings)
    second = await make_gateway([sim], settings=settings)
    change = {"ttft_ms": 900, "tpot_ms": 90}
    async with http.put(first.url + "/admin/slo-classes/gold", json=change) as response:
        assert response.status in (200, 201), await response.text()

    async def seen() -> bool:
        async with http.get(second.url + "/admin/slo-classes") as response:
            return "gold" in (await response.json())["slo_classes"]

    await eventually(seen, what="the other replica sees the class")
    body = {"model": MODEL, "prompt": "p", "max_tokens": 2}
    async with http.post(
        second.url + "/v1/completions", json=body, headers={"x-slo-class": "gold"}
    ) as response:
        assert response.status == 200
