"""Gateway replicas on one Redis: one config, changed at run time through /admin/config."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import free_port, redis_server
from gateway.app import RunningServer
from gateway.state.redis_store import RedisStore
from gateway.state.store import ModelBlob
from predictor import artifact
from tests.conftest import MODEL, GatewayFactory, SimFactory, eventually


async def _get_config(http: aiohttp.ClientSession, gw: RunningServer) -> tuple[str, Any]:
    async with http.get(gw.url + "/admin/config") as response:
        assert response.status == 200
        return response.headers["ETag"], await response.json()


async def _put_config(
    http: aiohttp.ClientSession, gw: RunningServer, body: Any, etag: str | None
) -> tuple[int, Any, dict[str, str]]:
    headers = {"If-Match": etag} if etag is not None else {}
    async with http.put(gw.url + "/admin/config", json=body, headers=headers) as response:
        return (
            response.status,
            await response.json(),
            {k.lower(): v for k, v in response.headers.items()},
        )


async def _complete(http: aiohttp.ClientSession, gw: RunningServer, **extra: Any) -> Any:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "ignore_eos": True, **extra}
    async with http.post(gw.url + "/v1/completions", json=body) as response:
        return response.status, dict(response.headers)


async def test_two_replicas_share_one_config(
    make_sim: SimFactory,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    redis_url: str,
) -> None:
    sim = await make_sim()
    shared = {"redis_url": redis_url, "redis_prefix": f"t-{uuid.uuid4().hex}", "config_poll_s": 0.2}
    a = await make_gateway([sim], settings=shared)
    b = await make_gateway([sim], settings=shared)
    etag_a, config = await _get_config(http, a)
    etag_b, _ = await _get_config(http, b)
    assert etag_a == etag_b == '"1"'  # the first replica seeded the store; the second read it

    config["slo_classes"]["gold"] = {"ttft_ms": 900, "tpot_ms": 40}
    status, answer, headers = await _put_config(http, a, config, etag_a)
    assert status == 200
    assert answer == {"version": 2}
    assert headers["etag"] == '"2"'

    async def b_has_it() -> bool:
        etag, seen = await _get_config(http, b)
        return etag == '"2"' and "gold" in seen["slo_classes"]

    await eventually(b_has_it, within_s=3, what="replica b picking up the change")
    async with http.post(
        b.url + "/v1/completions",
        json={"model": MODEL, "prompt": "x", "max_tokens": 2},
        headers={"x-slo-class": "gold"},
    ) as response:
        assert response.status == 200

    # A write based on the old version loses, and says which version is current.
    status, answer, headers = await _put_config(http, b, config, '"1"')
    assert status == 409
    assert answer["error"]["code"] == "stale_version"
    assert headers["etag"] == '"2"'


async def test_config_writes_are_validated(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway([await make_sim()])  # the embedded store
    etag, config = await _get_config(http, gw)
    status, answer, _ = await _put_config(http, gw, config, None)
    assert status == 428
    assert answer["error"]["param"] == "If-Match"
    status, answer, _ = await _put_config(http, gw, {**config, "default_class": "nope"}, etag)
    assert status == 400
    assert "default_class" in answer["error"]["message"]
    bad_backend = {**config, "backends": [{"name": "x", "url": "not a url"}]}
    status, answer, _ = await _put_config(http, gw, bad_backend, etag)
    assert status == 400
    assert answer["error"]["param"] == "backends.0.url"
    status, _, _ = await _put_config(http, gw, config, etag)
    assert status == 200


async def test_backends_join_and_drain_at_run_time(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    first, second = await make_sim(), await make_sim()
    gw = await make_gateway([first])
    etag, config = await _get_config(http, gw)

    # A long request on b0 is in flight while b0 leaves the config.
    long = asyncio.create_task(_complete(http, gw, max_tokens=300))
    await eventually(lambda: _is(bool(first.server.engine.running)))
    config["backends"] = [{"name": "b1", "url": second.url}]
    status, _, _ = await _put_config(http, gw, config, etag)
    assert status == 200

    async def b1_ready() -> bool:
        async with http.get(gw.url + "/ready") as response:
            return "b1" in (await response.json()).get("healthy_backends", [])

    await eventually(b1_ready, what="the new backend passing its probe")
    for _ in range(3):
        status, headers = await _complete(http, gw)
        assert status == 200
        assert headers["x-sluice-backend"] == "b1"
    status, headers = await long
    assert status == 200  # the drained backend finished what it had
    assert headers["x-sluice-backend"] == "b0"

    async def b0_gone() -> bool:
        async with http.get(gw.url + "/admin/stats") as response:
            return [b["name"] for b in (await response.json())["backends"]] == ["b1"]

    await eventually(b0_gone, what="the drained backend leaving")


async def _is(value: bool) -> bool:
    return value


async def test_serving_survives_a_redis_outage(
    make_sim: SimFactory,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    sim = await make_sim()
    port = free_port()
    with redis_server(tmp_path / "first", port) as url:
        gw = await make_gateway(
            [sim], settings={"redis_url": url, "config_poll_s": 0.1, "redis_prefix": "outage"}
        )
        etag, config = await _get_config(http, gw)
    # Redis is gone: requests are still served on the last config; writes say 503.
    for _ in range(3):
        status, _ = await _complete(http, gw)
        assert status == 200
    status, answer, _ = await _put_config(http, gw, config, etag)
    assert status == 503
    assert "shared state is unreachable" in answer["error"]["message"]
    # It comes back empty (no persistence here): the gateway gives it its config back,
    # and writes work again.
    with redis_server(tmp_path / "second", port):
        config["slo_classes"]["after"] = {"ttft_ms": 1000, "tpot_ms": 100}

        async def written() -> bool:
            etag, _ = await _get_config(http, gw)
            status, _, _ = await _put_config(http, gw, config, etag)
            return status == 200

        await eventually(written, what="writes working again once Redis is back")
        _, seen = await _get_config(http, gw)
        assert "after" in seen["slo_classes"]
        status, _ = await _complete(http, gw)
        assert status == 200


async def test_replicas_together_respect_a_backends_in_flight_bound(
    make_sim: SimFactory,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    redis_url: str,
) -> None:
    """Three replicas, one backend bounded at 2: never more than 2 in flight there."""
    sim = await make_sim()
    shared = {"redis_url": redis_url, "redis_prefix": f"t-{uuid.uuid4().hex}"}
    backends = [{"name": "b0", "url": sim.url, "max_in_flight": 2}]
    replicas = [await make_gateway([sim], settings=shared, backends=backends) for _ in range(3)]
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            engine = sim.server.engine
            peak = max(peak, len(engine.running) + len(engine.waiting))
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())

    async def one(gw: RunningServer) -> int:
        status, _ = await _complete(http, gw, max_tokens=30)
        return int(status)

    statuses = await asyncio.gather(*(one(replicas[i % 3]) for i in range(12)))
    watcher.cancel()
    assert statuses == [200] * 12
    assert peak == 2  # each replica alone would have allowed 2: together 6


async def test_backend_routes(
    make_sim: SimFactory,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    redis_url: str,
) -> None:
    first, second = await make_sim(), await make_sim()
    shared = {"redis_url": redis_url, "redis_prefix": f"t-{uuid.uuid4().hex}", "config_poll_s": 0.2}
    a = await make_gateway([first], settings=shared)
    b = await make_gateway([first], settings=shared)

    async with http.post(
        a.url + "/admin/backends", json={"name": "b1", "url": second.url, "max_in_flight": 7}
    ) as response:
        assert response.status == 201
        assert (await response.json())["version"] == 2
    async with http.post(
        a.url + "/admin/backends", json={"name": "b1", "url": second.url}
    ) as response:
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "backend_exists"
    async with http.post(
        a.url + "/admin/backends", json={"name": "bad", "url": "nope"}
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["param"] == "backends.2.url"

    # The other replica sees the new backend and routes to it once it passes its probe.
    async def b_lists_b1() -> bool:
        async with http.get(b.url + "/admin/backends") as response:
            rows = {r["name"]: r for r in (await response.json())["backends"]}
            return "b1" in rows and rows["b1"]["healthy"]

    await eventually(b_lists_b1, within_s=5, what="replica b probing the added backend")

    async with http.patch(b.url + "/admin/backends/b1", json={"max_in_flight": 3}) as response:
        assert response.status == 200
        assert (await response.json())["version"] == 3
    async with http.patch(b.url + "/admin/backends/zz", json={"weight": 2}) as response:
        assert response.status == 404
    async with http.patch(b.url + "/admin/backends/b1", json={"name": "x"}) as response:
        assert response.status == 400

    async with http.delete(a.url + "/admin/backends/b0") as response:
        assert response.status == 202
    async with http.delete(a.url + "/admin/backends/b0") as response:
        assert response.status == 404

    async def only_b1() -> bool:
        async with http.get(b.url + "/admin/config") as response:
            config = await response.json()
        return [x["name"] for x in config["backends"]] == ["b1"] and (
            config["backends"][0]["max_in_flight"] == 3
        )

    await eventually(only_b1, within_s=5, what="replica b seeing the edits")
    status, headers = await _complete(http, b)
    assert status == 200
    assert headers["x-sluice-backend"] == "b1"


async def test_replicas_share_samples_and_models(
    make_sim: SimFactory,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    redis_url: str,
) -> None:
    """Samples recorded on one replica train a retrain on another; a model published to the
    store is loaded by every replica."""
    sim = await make_sim()
    prefix = f"t-{uuid.uuid4().hex}"
    shared = {"redis_url": redis_url, "redis_prefix": prefix, "learning_sync_s": 0.1}
    a = await make_gateway([sim], settings=shared)
    b = await make_gateway([sim], settings=shared)

    async def chat(i: int) -> int:
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"hi {i}"}]}
        async with http.post(a.url + "/v1/chat/completions", json=body) as response:
            await response.read()
            return response.status

    assert await asyncio.gather(*(chat(i) for i in range(60))) == [200] * 60
    store = RedisStore(redis_url, prefix=prefix)

    async def all_shared() -> bool:
        return len(await store.recent_samples()) == 60

    await eventually(all_shared, what="replica a sharing its samples")
    async with http.post(b.url + "/admin/predictor/retrain") as response:
        outcome = await response.json()
    assert response.status == 200
    # b recorded nothing itself; it trained and scored on a's 60 samples.
    assert outcome["held_out_recent"] + outcome["trained_on"] == 60

    packaged = artifact.load(artifact.PACKAGED)
    manifest, weights = artifact.encode(
        packaged.model, version="published", training={}, weights_name="published.npz"
    )
    await store.put_model(ModelBlob("published", json.dumps(manifest), weights))

    async def both_adopted() -> bool:
        versions = []
        for gw in (a, b):
            async with http.get(gw.url + "/admin/predictor") as response:
                versions.append((await response.json())["version"])
        return versions == ["published", "published"]

    await eventually(both_adopted, what="both replicas loading the published model")
    # A model this build cannot load is refused; the replicas keep what they have.
    await store.put_model(ModelBlob("broken", json.dumps(manifest), b"not an npz"))
    await asyncio.sleep(0.5)
    assert await both_adopted()
    await store.close()
