"""Prefix-cache affinity over HTTP: a conversation's later turns go where its history is
cached, and the reply's cached tokens are what the backend reports."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.conftest import MODEL, GatewayFactory, SimFactory

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
