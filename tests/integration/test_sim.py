"""The simulator over HTTP: scale, real reply lengths, priority, preemption."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp

from bench.sim.fleet import start_fleet
from bench.sim.lengths import KnownPrompt, LengthDistribution, LengthTable, prompt_key
from bench.sim.profiles import get_profile
from tests.conftest import FAST, MODEL, SimFactory, eventually


async def test_sixteen_servers_in_one_process(http: aiohttp.ClientSession) -> None:
    fleet = await start_fleet([FAST] * 16, model=MODEL)
    try:
        assert len({sim.port for sim in fleet}) == 16

        async def one(url: str) -> int:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "ignore_eos": True}
            async with http.post(url + "/v1/completions", json=body) as response:
                usage = (await response.json())["usage"]
                return int(usage["completion_tokens"])

        assert await asyncio.gather(*(one(sim.url) for sim in fleet)) == [3] * 16
    finally:
        for sim in fleet:
            await sim.stop()


async def test_known_prompts_get_their_real_lengths(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    table = LengthTable({prompt_key("What is a queue?"): KnownPrompt(42, 17)})
    sim = await make_sim(lengths=table, distribution=LengthDistribution("exponential", 3))

    async def chat(content: str, **extra: object) -> dict[str, object]:
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
        async with http.post(sim.url + "/v1/chat/completions", json=body) as response:
            assert response.status == 200
            answer: dict[str, object] = await response.json()
            return answer

    known = await chat("What is a queue?")
    assert known["usage"] == {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59}
    assert known["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    capped = await chat("What is a queue?", max_tokens=5)
    assert capped["usage"]["completion_tokens"] == 5  # type: ignore[index]
    assert capped["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    floored = await chat("Something else entirely", min_tokens=50, max_tokens=60)
    assert floored["usage"]["completion_tokens"] >= 50  # type: ignore[index]


async def test_priority_scheduling_over_http(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    profile = dataclasses.replace(FAST, max_num_seqs=1)
    sim = await make_sim(profile, priority_scheduling=True)
    finished: list[str] = []

    async def send(name: str, priority: int, tokens: int) -> None:
        body = {
            "model": MODEL,
            "prompt": name,
            "max_tokens": tokens,
            "ignore_eos": True,
            "priority": priority,
        }
        async with http.post(sim.url + "/v1/completions", json=body) as response:
            assert response.status == 200
        finished.append(name)

    async def queued(count: int) -> bool:
        return len(sim.server.engine.running) + len(sim.server.engine.waiting) == count

    first = asyncio.create_task(send("first", 0, 40))
    await eventually(lambda: queued(1))
    late_low = asyncio.create_task(send("low", 0, 5))
    await eventually(lambda: queued(2))
    late_high = asyncio.create_task(send("high", -10, 5))
    await asyncio.gather(first, late_low, late_high)
    assert finished == ["first", "high", "low"]


async def test_preemption_shows_in_metrics(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    profile = dataclasses.replace(
        get_profile("llama8b-h100").scaled(0.1), kv_blocks=12, block_size=4, max_model_len=40
    )

    async def send() -> int:
        body = {"model": MODEL, "prompt": "a b c d e f g h", "max_tokens": 20, "ignore_eos": True}
        async with http.post(sim.url + "/v1/completions", json=body) as response:
            return int((await response.json())["usage"]["completion_tokens"])

    sim = await make_sim(profile)
    assert list(await asyncio.gather(send(), send())) == [20, 20]
    async with http.get(sim.url + "/metrics") as response:
        text = await response.text()
    line = next(s for s in text.splitlines() if s.startswith("vllm:num_preemptions_total{"))
    assert float(line.rsplit(" ", 1)[1]) >= 1


async def test_prefix_cache_hits_show_in_usage_and_metrics(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(prompt_tokens_details=True)
    history = " ".join(f"turn{i}" for i in range(400))
    cached = []
    for question in ("first question", "second question"):
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"{history} {question}"}],
            "max_tokens": 2,
        }
        async with http.post(sim.url + "/v1/chat/completions", json=body) as response:
            usage = (await response.json())["usage"]
        cached.append(usage["prompt_tokens_details"]["cached_tokens"])
    # The shared 400 words are 25 full blocks of 16; the second prompt finds them.
    assert cached == [0, 400]
    async with http.get(sim.url + "/metrics") as response:
        text = await response.text()
    hits = [line for line in text.splitlines() if line.startswith("vllm:prefix_cache_hits_total")]
    assert hits
    assert hits[0].endswith(" 400.0")
    plain = await make_sim()  # vLLM's default: no prompt_tokens_details
    body = {"model": MODEL, "prompt": "p", "max_tokens": 1}
    async with http.post(plain.url + "/v1/completions", json=body) as response:
        assert "prompt_tokens_details" not in (await response.json())["usage"]
