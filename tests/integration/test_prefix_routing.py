"""Prefix-cache affinity over HTTP: a conversation's later turns go where its history is
cached, and the reply's cached tokens are what the backend reports."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests.conftest import MODEL, GatewayFactory, SimFactory, metric_sum

HISTORY = " ".join(f"word{i}" for i in range(600))


def _turn(n: int) -> dict[str, Any]:
    messages: list[dict[str, str]] = [{"role": "user", "content": HISTORY}]
    for i in range(n):
        messages += [
            {"role": "assistant", "content": f"answer {i}"},
            {"role": "user", "content": f"question {i}"},
        ]
    return {"model": MODEL, "messages": messages, "max_tokens": 2}


async def test_later_turns_follow_the_cached_history(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sims = [await make_sim(prompt_tokens_details=True) for _ in range(3)]
    gateway = await make_gateway(sims)
    backends = []
    cached = []
    for n in range(4):
        async with http.post(gateway.url + "/v1/chat/completions", json=_turn(n)) as response:
            assert response.status == 200
            backends.append(response.headers["x-sluice-backend"])
            cached.append((await response.json())["usage"]["prompt_tokens_details"])
    assert len(set(backends)) == 1  # every turn where the history is
    assert cached[0]["cached_tokens"] == 0
    assert all(c["cached_tokens"] >= 500 for c in cached[1:])
    # Without prefix awareness the same turns spread over the backends.
    plain = await make_gateway(sims, scheduler={"prefix_aware": False})
    spread = []
    for n in range(4):
        async with http.post(plain.url + "/v1/chat/completions", json=_turn(n)) as response:
            spread.append(response.headers["x-sluice-backend"])
    assert len(set(spread)) > 1


async def _reply(response: aiohttp.ClientResponse, stream: bool) -> str:
    """The reply's text as a client assembles it (a stream's deltas joined)."""
    if not stream:
        return str((await response.json())["choices"][0]["message"]["content"])
    parts = []
    async for line in response.content:
        if line.startswith(b"data: {"):
            delta = json.loads(line[6:])["choices"][0]["delta"]
            parts.append(delta.get("content") or "")
    return "".join(parts)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_next_turn_finds_the_reply_it_quotes_cached(
    stream: bool, make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    # The engine caches the reply's blocks as well as the prompt's; the gateway indexes the
    # reply it relayed, so it expects the next turn's hit to reach into the reply.
    sims = [await make_sim(prompt_tokens_details=True) for _ in range(2)]
    gateway = await make_gateway(sims)
    first: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": HISTORY}],
        "max_tokens": 300,
        "ignore_eos": True,
        "stream": stream,
    }
    url = gateway.url + "/v1/chat/completions"
    async with http.post(url, json=first) as response:
        assert response.status == 200
        reply = await _reply(response, stream)
        backend = response.headers["x-sluice-backend"]
    assert len(reply.split()) == 300

    async def next_turn(quoted: str) -> tuple[int, str]:
        """Send the conversation on, quoting ``quoted`` as the reply: (cached tokens the
        backend reports, the backend)."""
        body = {
            "model": MODEL,
            "messages": [
                *first["messages"],
                {"role": "assistant", "content": quoted},
                {"role": "user", "content": "and then?"},
            ],
            "max_tokens": 1,
        }
        async with http.post(url, json=body) as response:
            assert response.status == 200
            usage = (await response.json())["usage"]
            return usage["prompt_tokens_details"]["cached_tokens"], response.headers[
                "x-sluice-backend"
            ]

    counter = f'sluice_prefix_cached_tokens_total{{backend="{backend}",source='

    async def expected() -> float:
        return await metric_sum(http, gateway.url, counter + '"expected"')

    # 600 prompt tokens and the KV of 299 reply tokens (the last is never fed back): 56
    # blocks of 16.
    assert await next_turn(reply) == (896, backend)
    assert await metric_sum(http, gateway.url, counter + '"reported"') == 896
    quoting = await expected()
    # A client that sends back another reply hits the history's blocks only...
    assert await next_turn("something else " * 150) == (592, backend)
    other = await expected() - quoting
    # ...and the gateway expects as much: the history is about three quarters of the
    # prompt's text, the history and the reply nearly all of it (the gateway counts tokens
    # by its own estimate, so these are not the engine's figures).
    assert other > 0
    assert quoting / other > 1.25
