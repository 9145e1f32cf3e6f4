"""The part of vLLM's OpenAI server that Sluice relies on, checked against each target.

The same tests run against the simulator (always) and a real vLLM (marked ``vllm``), so the
simulator is held to what vLLM really answers: fields, metric names, error statuses.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiohttp
import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from adapters.base import EngineLoad
from adapters.vllm import VllmAdapter
from gateway.tokens import calibration_text
from tests.conformance.targets import MAX_LORAS, MAX_NUM_SEQS, MAX_QUEUED, Target

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about queues."}]


def _client(target: Target) -> OpenAI:
    return OpenAI(base_url=target.url + "/v1", api_key="unused", max_retries=0)


def _post(target: Target, path: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        target.url + path,
        content=content,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )


def _events(target: Target, path: str, body: dict[str, Any]) -> list[dict[str, Any] | str]:
    events: list[dict[str, Any] | str] = []
    with httpx.stream("POST", target.url + path, json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_health_version_load(target: Target) -> None:
    health = httpx.get(target.url + "/health")
    assert health.status_code == 200
    assert health.content == b""
    assert isinstance(httpx.get(target.url + "/version").json()["version"], str)
    assert isinstance(httpx.get(target.url + "/load").json()["server_load"], int)


def test_models(target: Target) -> None:
    listing = httpx.get(target.url + "/v1/models").json()
    assert listing["object"] == "list"
    [card] = listing["data"]
    assert card["id"] == target.model
    assert card["object"] == "model"
    assert card["owned_by"] == "vllm"
    assert card["max_model_len"] == target.max_model_len
    assert card["parent"] is None
    assert {"root", "created", "permission"} <= set(card)


@pytest.mark.parametrize("body", [{"prompt": "hello world"}, {"messages": CHAT}])
def test_tokenize(target: Target, body: dict[str, Any]) -> None:
    answer = _post(target, "/tokenize", {"model": target.model, **body}).json()
    assert answer["max_model_len"] == target.max_model_len
    assert answer["count"] == len(answer["tokens"]) > 0


def test_the_adapter_counts_tokens_as_the_server_does(target: Target) -> None:
    text = calibration_text()

    async def count(model: str) -> int:
        async with aiohttp.ClientSession() as session:
            return await VllmAdapter(session, target.url).tokenize(model, text, 30)

    counted = asyncio.run(count(target.model))
    body = {"model": target.model, "prompt": text, "add_special_tokens": False}
    assert counted == _post(target, "/tokenize", body).json()["count"]
    assert 0 < counted < len(text)
    with pytest.raises(ValueError, match="without a count"):
        asyncio.run(count("no-such-model"))


def test_chat_non_streaming(target: Target) -> None:
    reply = _client(target).chat.completions.create(
        model=target.model, messages=CHAT, max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert reply.id.startswith("chatcmpl-")
    assert reply.object == "chat.completion"
    assert reply.model == target.model
    assert reply.choices[0].message.role == "assistant"
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5


def test_completion_non_streaming(target: Target) -> None:
    reply = _client(target).completions.create(
        model=target.model, prompt="hello", max_tokens=4, extra_body={"min_tokens": 4}
    )
    assert reply.id.startswith("cmpl-")
    assert reply.object == "text_completion"
    assert isinstance(reply.choices[0].text, str)
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 4


def test_chat_stream_with_usage(target: Target) -> None:
    events = _events(
        target,
        "/v1/chat/completions",
        {
            "model": target.model,
            "messages": CHAT,
            "max_tokens": 6,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    with_choices = [c for c in chunks if c["choices"]]
    assert with_choices[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in with_choices[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 6


def test_completion_stream_without_usage(target: Target) -> None:
    events = _events(
        target,
        "/v1/completions",
        {
            "model": target.model,
            "prompt": "hi",
            "max_tokens": 3,
            "ignore_eos": True,
            "stream": True,
        },
    )
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert all("usage" not in c or c["usage"] is None for c in chunks)
    _check_chunk_count(target, len(chunks), 3)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_continuous_usage_stats(target: Target) -> None:
    events = _events(
        target,
        "/v1/completions",
        {
            "model": target.model,
            "prompt": "hi",
            "max_tokens": 3,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        },
    )
    chunks = [e for e in events if isinstance(e, dict) and e["choices"]]
    counts = [c["usage"]["completion_tokens"] for c in chunks]
    # Each chunk counts the tokens so far: strictly rising to the whole reply.
    assert counts == sorted(set(counts))
    assert counts[0] >= 1
    assert counts[-1] == 3
    _check_chunk_count(target, len(counts), 3)


def _check_chunk_count(target: Target, chunks: int, tokens: int) -> None:
    """A streamed reply of ``tokens`` tokens comes in one chunk per token from the simulator.
    vLLM merges the deltas that pile up while its API server is behind the engine (its output
    collector), so on a busy machine it may send fewer, never more, and never none."""
    if target.name == "sim":
        assert chunks == tokens
    else:
        assert 1 <= chunks <= tokens


def test_priority_is_accepted(target: Target) -> None:
    reply = _post(
        target,
        "/v1/completions",
        {"model": target.model, "prompt": "x", "max_tokens": 2, "priority": -5},
    )
    assert reply.status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/completions", {"model": "nope", "prompt": "x", "max_tokens": 2}, 404, "model"),
        ("/v1/chat/completions", {"model": "nope", "messages": CHAT}, 404, "model"),
        (
            "/v1/completions",
            {"model": "MODEL", "prompt": "x", "max_tokens": 5000},
            400,
            "max_tokens",
        ),
        ("/v1/completions", {"model": "MODEL", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        (
            "/v1/completions",
            {"model": "MODEL", "prompt": "hello world " * 800, "max_tokens": 5},
            400,
            "input_tokens",
        ),
        ("/v1/completions", {"model": "MODEL"}, 400, "prompt"),
        ("/v1/chat/completions", {"model": "MODEL"}, 400, None),
        ("/v1/completions", {"model": "MODEL", "prompt": "x", "max_tokens": "many"}, 400, None),
        ("/v1/completions", b"{not json", 400, None),
    ],
)
def test_errors(target: Target, path: str, body: Any, status: int, param: str | None) -> None:
    if isinstance(body, dict) and body.get("model") == "MODEL":
        body = {**body, "model": target.model}
    response = _post(target, path, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["code"] == status
    assert isinstance(error["message"], str)
    if param is not None:
        assert error["param"] == param
    if status == 404:
        assert error["type"] == "NotFoundError"


METRICS = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:num_requests_waiting_by_reason",
    "vllm:kv_cache_usage_perc",
    "vllm:cache_config_info",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:num_preemptions_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:admission_rejections_total",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:request_time_per_output_token_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:request_queue_time_seconds_bucket",
    "vllm:request_prefill_time_seconds_bucket",
    "vllm:request_decode_time_seconds_bucket",
)


def test_metrics_names_and_labels(target: Target) -> None:
    _post(target, "/v1/completions", {"model": target.model, "prompt": "x", "max_tokens": 3})
    text = httpx.get(target.url + "/metrics").text
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    for name in METRICS:
        lines = [s for s in samples if s.startswith(name + "{")]
        assert lines, name
        if name != "vllm:admission_rejections_total":  # labelled by model and reason alone
            assert all('engine="' in s for s in lines), name
        if name != "vllm:cache_config_info":  # labelled by engine and cache settings alone
            assert all(f'model_name="{target.model}"' in s for s in lines), name
    rejections = [s for s in samples if s.startswith("vllm:admission_rejections_total{")]
    assert any('reason="max_num_queued_reqs"' in s for s in rejections)
    reasons = [s for s in samples if s.startswith("vllm:request_success_total{")]
    for reason in ("stop", "length", "abort"):
        assert any(f'finished_reason="{reason}"' in s for s in reasons), reason
    info = next(s for s in samples if s.startswith("vllm:cache_config_info{"))
    assert 'block_size="' in info
    assert 'num_gpu_blocks="' in info


def _gauge(target: Target, name: str) -> float:
    text = httpx.get(target.url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


async def test_full_queue_answers_503(target: Target) -> None:
    body = {"model": target.model, "prompt": "x", "max_tokens": 400, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=120) as client:
        replies = await asyncio.gather(
            *(
                client.post(target.url + "/v1/completions", json=body)
                for _ in range(MAX_NUM_SEQS + MAX_QUEUED + 8)
            )
        )
    statuses = [r.status_code for r in replies]
    assert statuses.count(503) >= 1
    assert statuses.count(200) >= MAX_NUM_SEQS
    busy = next(r for r in replies if r.status_code == 503).json()["error"]
    assert "busy" in busy["message"]
    assert _gauge(target, "vllm:admission_rejections_total") >= statuses.count(503)


def test_disconnect_aborts_the_request(target: Target) -> None:
    body = {
        "model": target.model,
        "prompt": "x",
        "max_tokens": 900,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", target.url + "/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert _gauge(target, "vllm:num_requests_running") == 1
    deadline = time.monotonic() + 20
    while _gauge(target, "vllm:num_requests_running") != 0:
        assert time.monotonic() < deadline, "request still running after the client left"
        time.sleep(0.1)


def _fresh_prompt(words: int) -> str:
    """A prompt no earlier request shared a prefix with (prefix caching is on)."""
    return " ".join(f"w{uuid.uuid4().hex[:6]}" for _ in range(words))


def _first_chunks(target: Target, body: dict[str, Any]) -> tuple[float, float]:
    """Seconds from the request to its first streamed chunk, and to the first with text."""
    start = time.perf_counter()
    first: float | None = None
    with httpx.stream("POST", target.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            now = time.perf_counter() - start
            first = now if first is None else first
            delta = json.loads(line[6:])["choices"][0]["delta"]
            if delta.get("content"):
                return first, now
    raise AssertionError("no chunk with text")


def _stream_body(target: Target, prompt: str) -> dict[str, Any]:
    return {
        "model": target.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 2,
        "ignore_eos": True,
        "stream": True,
    }


def test_the_role_chunk_comes_with_the_first_token(target: Target) -> None:
    # A long prompt: prefill takes a while, and the assistant-role chunk waits for it (a
    # client timing the first chunk, as `vllm bench serve` does, measures the prefill).
    first, text = _first_chunks(target, _stream_body(target, _fresh_prompt(150)))
    assert first >= 0.5 * text


def test_a_repeated_prompt_hits_the_prefix_cache(target: Target) -> None:
    prompt = _fresh_prompt(150)
    before_queries = _gauge(target, "vllm:prefix_cache_queries_total")
    before_hits = _gauge(target, "vllm:prefix_cache_hits_total")
    _, cold = _first_chunks(target, _stream_body(target, prompt))
    _, warm = _first_chunks(target, _stream_body(target, prompt))
    queries = _gauge(target, "vllm:prefix_cache_queries_total") - before_queries
    hits = _gauge(target, "vllm:prefix_cache_hits_total") - before_hits
    # Both prompts were looked up; most of the second one was found.
    assert queries >= 2 * 150
    assert hits >= 0.8 * queries / 2
    assert warm < cold


def _block_size(target: Target) -> int:
    text = httpx.get(target.url + "/metrics").text
    info = next(line for line in text.splitlines() if line.startswith("vllm:cache_config_info{"))
    return int(info.split('block_size="', 1)[1].split('"', 1)[0])


def test_a_reply_is_cached_with_its_prompt(target: Target) -> None:
    # A conversation's next turn quotes the last reply: the engine caches the blocks the
    # reply filled, not only the prompt's (bench.sim.engine does the same).
    block = _block_size(target)
    first = _post(
        target,
        "/v1/completions",
        {
            "model": target.model,
            "prompt": _fresh_prompt(100),
            "max_tokens": 3 * block,
            "ignore_eos": True,
            "return_token_ids": True,
        },
    )
    assert first.status_code == 200, first.text
    choice = first.json()["choices"][0]
    prompt, reply = choice["prompt_token_ids"], choice["token_ids"]
    assert len(reply) == 3 * block
    before = _gauge(target, "vllm:prefix_cache_hits_total")
    follow_up = {"model": target.model, "prompt": prompt + reply + prompt[:8], "max_tokens": 1}
    assert _post(target, "/v1/completions", follow_up).status_code == 200
    hits = _gauge(target, "vllm:prefix_cache_hits_total") - before
    # Every full block of the prompt and the reply but its last token (whose KV is never
    # computed), well past the prompt's own blocks.
    assert hits == (len(prompt) + len(reply) - 1) // block * block
    assert hits > len(prompt) + block


def test_lora_adapters_load_serve_and_unload(target: Target) -> None:
    """What gateway.lora relies on: loads and unloads at run time, the listing with parents,
    the slots in vllm:lora_requests_info, requests naming an adapter, and the errors."""
    one, two = target.adapters
    assert (
        _post(target, "/v1/load_lora_adapter", {"lora_name": "one", "lora_path": one}).status_code
        == 200
    )
    again = _post(target, "/v1/load_lora_adapter", {"lora_name": "one", "lora_path": one})
    assert again.status_code == 400
    assert "already been loaded" in again.text  # adapters.vllm takes this for loaded
    assert (
        _post(target, "/v1/load_lora_adapter", {"lora_name": "two", "lora_path": two}).status_code
        == 200
    )
    try:
        cards = {c["id"]: c for c in httpx.get(target.url + "/v1/models").json()["data"]}
        assert cards["one"]["parent"] == target.model
        assert cards["two"]["parent"] == target.model
        for name in ("one", "two"):
            answer = _post(
                target, "/v1/completions", {"model": name, "prompt": "hi", "max_tokens": 3}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == name
        text = httpx.get(target.url + "/metrics").text
        info = [line for line in text.splitlines() if line.startswith("vllm:lora_requests_info{")]
        assert info
        assert all(f'max_lora="{MAX_LORAS}"' in line for line in info)
        load = asyncio.run(_probe_load(target))
        assert load.max_loras == MAX_LORAS
    finally:
        for name in ("one", "two"):
            assert _post(target, "/v1/unload_lora_adapter", {"lora_name": name}).status_code == 200
    gone = _post(target, "/v1/unload_lora_adapter", {"lora_name": "one"})
    assert gone.status_code == 404  # adapters.vllm takes this for unloaded
    missing = _post(target, "/v1/completions", {"model": "one", "prompt": "hi", "max_tokens": 3})
    assert missing.status_code == 404
    assert [c["id"] for c in httpx.get(target.url + "/v1/models").json()["data"]] == [target.model]


async def _probe_load(target: Target) -> EngineLoad:
    async with aiohttp.ClientSession() as session:
        probe = await VllmAdapter(session, target.url).probe(30)
    assert probe.load is not None
    return probe.load


def test_the_adapter_loads_and_unloads_through_the_engine_adapter(target: Target) -> None:
    async def cycle() -> None:
        async with aiohttp.ClientSession() as session:
            engine = VllmAdapter(session, target.url)
            await engine.load_adapter("one", target.adapters[0], 60)
            await engine.load_adapter("one", target.adapters[0], 60)  # loaded already: fine
            await engine.unload_adapter("one", 60)
            await engine.unload_adapter("one", 60)  # unloaded already: fine

    asyncio.run(cycle())
