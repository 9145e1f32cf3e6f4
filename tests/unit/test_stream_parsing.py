from __future__ import annotations

import json

import pytest

from adapters.sse import SseSplitter, event_data
from adapters.vllm import count_tokens, parse_event, parse_load


def test_split_across_chunk_boundaries() -> None:
    splitter = SseSplitter()
    stream = b'data: {"a":1}\n\ndata: {"b":2}\r\n\r\ndata: [DONE]\n\n'
    events: list[bytes] = []
    for i in range(0, len(stream), 5):
        events.extend(splitter.feed(stream[i : i + 5]))
    assert events == [b'data: {"a":1}\n\n', b'data: {"b":2}\r\n\r\n', b"data: [DONE]\n\n"]
    assert splitter.rest() == b""


def test_rest_is_a_cut_event() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b'data: {"a"') == []
    assert splitter.rest() == b'data: {"a"'


@pytest.mark.parametrize(
    ("raw", "data"),
    [
        (b"data: x\n\n", "x"),
        (b"data:x\n\n", "x"),
        (b"event: e\ndata: a\ndata: b\n\n", "a\nb"),
        (b": comment\n\n", None),
    ],
)
def test_event_data(raw: bytes, data: str | None) -> None:
    assert event_data(raw) == data


def _event(payload: object) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


@pytest.mark.parametrize(
    ("payload", "tokens"),
    [
        ({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, 0),
        ({"choices": [{"delta": {"content": "hi"}}]}, 1),
        ({"choices": [{"delta": {"tool_calls": [{"index": 0}]}}]}, 1),
        ({"choices": [{"delta": {"reasoning_content": "hm"}}]}, 1),
        ({"choices": [{"text": "x"}, {"text": "y"}]}, 2),
        ({"choices": [{"text": ""}]}, 0),
        ({"choices": []}, 0),
        ({"choices": "junk"}, 0),
    ],
)
def test_count_tokens(payload: dict[str, object], tokens: int) -> None:
    assert count_tokens(payload) == tokens


def test_parse_event_kinds() -> None:
    assert parse_event(b"data: [DONE]\n\n").done
    usage = parse_event(_event({"choices": [], "usage": {"completion_tokens": 3}}))
    assert usage.usage_only
    assert usage.usage == {"completion_tokens": 3}
    with_usage = parse_event(_event({"choices": [{"text": "a"}], "usage": {"x": 1}}))
    assert not with_usage.usage_only
    assert with_usage.tokens == 1
    error = parse_event(_event({"error": {"message": "boom"}}))
    assert error.error == {"message": "boom"}
    junk = parse_event(b"data: {not json\n\n")
    assert junk.data is None
    assert junk.raw == b"data: {not json\n\n"


def test_parse_load_current_and_old_names() -> None:
    current = """# HELP vllm:num_requests_running x
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 99.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
"""
    load = parse_load(current)
    assert (load.running, load.waiting, load.kv_usage) == (5.0, 4.0, 0.375)
    old = 'vllm:gpu_cache_usage_perc{model_name="m"} 0.9\n'
    assert parse_load(old).kv_usage == 0.9
    assert parse_load("").running is None
