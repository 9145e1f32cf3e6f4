"""The OpenAI surface through the gateway, driven by the official SDK against simulated vLLM."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import MODEL, GatewayFactory, SimFactory, openai_client


async def test_streaming_chat(make_sim: SimFactory, make_gateway: GatewayFactory) -> None:
    sim = await make_sim()
    gateway = await make_gateway([sim])
    client = openai_client(gateway, **{"x-slo-class": "interactive"})
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say something."}],
        max_tokens=12,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = [chunk async for chunk in stream]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(content.split()) == 12
    assert chunks[-1].choices[0].finish_reason == "length"
    # The client did not ask for usage, so the gateway's own usage request stays hidden.
    assert all(c.usage is None for c in chunks)
    assert sim.server.received[-1]["stream_options"] == {"include_usage": True}
    await client.close()


async def test_include_usage_is_honoured(
    make_sim: SimFactory, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway([await make_sim()])
    client = openai_client(gateway)
    stream = await client.completions.create(
        model=MODEL,
        prompt="one two three",
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 7
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) == 7
    await client.close()


async def test_non_streaming_chat_and_completion(
    make_sim: SimFactory, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway([await make_sim()])
    client = openai_client(gateway)
    chat = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        extra_body={"ignore_eos": True},
    )
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 5
    assert chat.choices[0].message.content
    completion = await client.completions.create(
        model=MODEL, prompt="hello", max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    await client.close()


async def test_models_are_the_union_of_backends(
    make_sim: SimFactory, make_gateway: GatewayFactory
) -> None:
    a = await make_sim(model="alpha")
    b = await make_sim(model="beta")
    c = await make_sim(model="alpha")
    gateway = await make_gateway([a, b, c])
    client = openai_client(gateway)
    models = await client.models.list()
    assert sorted(m.id for m in models.data) == ["alpha", "beta"]
    await client.close()


async def test_requests_go_only_to_backends_serving_the_model(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await make_sim(model="alpha")
    b = await make_sim(model="beta")
    gateway = await make_gateway([a, b])
    for model, backend in (("alpha", "b0"), ("beta", "b1"), ("alpha", "b0")):
        async with http.post(
            gateway.url + "/v1/completions",
            json={"model": model, "prompt": "x", "max_tokens": 2},
        ) as response:
            assert response.status == 200
            assert response.headers["x-sluice-backend"] == backend
    assert len(a.server.received) == 2
    assert len(b.server.received) == 1


async def test_gateway_fields_never_reach_the_backend(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    gateway = await make_gateway([sim])
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2, "temperature": 0.5, "seed": 3}
    headers = {
        "x-slo-ttft-ms": "800",
        "x-slo-tpot-ms": "40",
        "x-slo-class": "batch",
        "x-request-id": "abc-123",
    }
    async with http.post(gateway.url + "/v1/completions", json=body, headers=headers) as response:
        assert response.status == 200
        assert response.headers["x-request-id"] == "abc-123"
    assert sim.server.received[-1] == body
    upstream_headers = {k.lower() for k in sim.server.received_headers[-1]}
    assert not any(h.startswith("x-slo") for h in upstream_headers)


async def test_load_spreads_over_backends(
    make_sim: SimFactory, make_gateway: GatewayFactory
) -> None:
    sims = [await make_sim() for _ in range(3)]
    gateway = await make_gateway(sims)
    client = openai_client(gateway)
    await asyncio.gather(
        *(
            client.completions.create(
                model=MODEL, prompt="p", max_tokens=20, extra_body={"ignore_eos": True}
            )
            for _ in range(9)
        )
    )
    assert [len(s.server.received) for s in sims] == [3, 3, 3]
    await client.close()


async def test_in_flight_bound_queues_in_the_gateway(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    gateway = await make_gateway(
        [sim], backends=[{"name": "b0", "url": sim.url, "max_in_flight": 2}]
    )
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(sim.server.engine.running) + len(sim.server.engine.waiting))
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())

    async def one() -> int:
        async with http.post(
            gateway.url + "/v1/completions",
            json={"model": MODEL, "prompt": "p", "max_tokens": 10, "ignore_eos": True},
        ) as response:
            return response.status

    statuses = await asyncio.gather(*(one() for _ in range(8)))
    watcher.cancel()
    assert statuses == [200] * 8
    assert peak == 2


async def test_passthrough_of_other_v1_paths(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    gateway = await make_gateway([sim])
    async with http.post(
        gateway.url + "/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": "/x"}
    ) as response:
        assert response.status == 200
        assert "added successfully" in await response.text()
    assert sim.server.adapters == {"sql": "/x"}
    async with http.post(
        gateway.url + "/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": "/x"}
    ) as response:
        assert response.status == 400
        assert "already been loaded" in (await response.json())["error"]["message"]
    async with http.post(
        gateway.url + "/v1/embeddings", json={"model": "nope", "input": "x"}
    ) as response:
        assert response.status == 404
        assert (await response.json())["error"]["param"] == "model"


async def test_predicted_length_is_reported(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway([await make_sim()])
    sizes = {}
    for name, content in (
        ("essay", "Write a long detailed essay on the history of Rome."),
        ("ack", "Thanks!"),
    ):
        async with http.post(
            gateway.url + "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 2000,
            },
        ) as response:
            assert response.status == 200
            sizes[name] = int(response.headers["x-sluice-predicted-tokens"])
    assert sizes["essay"] > sizes["ack"] >= 1


async def test_slo_headers_as_load_generators_send_them(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Both targets explicit and a class name the config does not know: served, counted as
    custom; explicit targets equal to a known class's: counted under that class."""
    gateway = await make_gateway([await make_sim()])
    body = {"model": MODEL, "prompt": "p", "max_tokens": 2}
    for headers in (
        {"x-slo-class": "s1", "x-slo-ttft-ms": "800", "x-slo-tpot-ms": "60"},
        {"x-slo-class": "interactive", "x-slo-ttft-ms": "500", "x-slo-tpot-ms": "50"},
    ):
        async with http.post(
            gateway.url + "/v1/completions", json=body, headers=headers
        ) as response:
            assert response.status == 200, await response.text()
    async with http.get(gateway.url + "/metrics") as response:
        text = await response.text()
    served = [line for line in text.splitlines() if line.startswith("sluice_requests_total{")]
    assert any('slo_class="custom"' in line and line.endswith(" 1.0") for line in served)
    assert any('slo_class="interactive"' in line and line.endswith(" 1.0") for line in served)
    assert not any('slo_class="s1"' in line for line in served)
