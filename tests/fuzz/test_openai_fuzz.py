"""Property-based fuzzing of the OpenAI surface, over real sockets, against ``sluice serve`` on a
simulated fleet.

Requests are generated field by field (types, ranges, nesting, sizes, encodings), with hostile
header values, methods and paths, and sent as raw HTTP/1.1. Whatever comes in: never a 5xx,
never a hang, an OpenAI error body on every 4xx, and afterwards the gateway is healthy with
nothing left in flight or queued.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.conftest import FUZZ_MODEL, TALLY, Target

ANSWER_WITHIN_S = 30.0
OPENAI_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/models"]

# --- values ------------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
    st.sampled_from(["", " ", "\x00", "\u202e", "\ufeff", "a" * 5000, "\ud83d\ude00"]),
)
integers = st.one_of(
    st.integers(-3, 40),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 2**31, 2**63, 10**30]),
)
numbers = st.one_of(integers, st.floats(allow_nan=False, allow_infinity=False), st.just(1e308))
scalars = st.one_of(st.none(), st.booleans(), integers, numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
anything = st.one_of(json_values, st.just([[[[[[[[[]]]]]]]]]))


def _field(value: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any] = anything) -> Any:
    """Mostly (7 in 8) a sane value of the field's type, sometimes anything at all."""
    return st.sampled_from(range(8)).flatmap(lambda pick: hostile if pick == 7 else value)


content = st.one_of(
    texts,
    st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", ""]), "text": texts}),
        max_size=3,
    ),
    anything,
)
message = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "developer", "", "tool"])},
        optional={"content": content, "name": texts},
    ),
    anything,
)
prompt = _field(
    st.one_of(
        texts,
        st.lists(texts, max_size=3),
        st.lists(st.integers(-5, 200_000), max_size=20),
        st.lists(st.lists(st.integers(0, 100), max_size=5), max_size=3),
    )
)


common = {
    "model": _field(st.sampled_from([*[FUZZ_MODEL] * 8, "other-model", ""])),
    "max_tokens": _field(st.integers(1, 12), integers),
    "stream": _field(st.booleans()),
    "ignore_eos": _field(st.booleans()),
}
optional = {
    "temperature": _field(st.floats(0, 2), numbers),
    "top_p": _field(st.floats(0.01, 1), numbers),
    "n": _field(st.just(1), integers),
    "best_of": _field(st.just(1), integers),
    "min_tokens": _field(st.integers(0, 4), integers),
    "stream_options": _field(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "stop": _field(st.one_of(texts, st.lists(texts, max_size=3))),
    "seed": _field(st.integers(0, 2**32), integers),
    "logprobs": _field(st.none()),
    "priority": _field(st.integers(-10, 10), integers),
    "user": texts,
    "extra_engine_field": anything,
}
chat_bodies = st.fixed_dictionaries(
    {**common, "messages": _field(st.lists(message, min_size=1, max_size=4))}, optional=optional
)
completion_bodies = st.fixed_dictionaries({**common, "prompt": prompt}, optional=optional)

# Requests every field of which is valid: they reach the queue, the guards and the relay.
valid_bodies = st.fixed_dictionaries(
    {
        "model": st.just(FUZZ_MODEL),
        "max_tokens": st.integers(1, 24),
        "stream": st.booleans(),
        "ignore_eos": st.booleans(),
    },
    optional={
        "temperature": st.floats(0, 2),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "stop": st.lists(st.text(max_size=3), max_size=2),
        "min_tokens": st.integers(0, 1),
        "user": st.text(max_size=10),
    },
).flatmap(
    lambda body: st.one_of(
        st.fixed_dictionaries(
            {
                "messages": st.lists(
                    st.fixed_dictionaries(
                        {
                            "role": st.sampled_from(["user", "assistant", "system"]),
                            "content": st.text(max_size=300),
                        }
                    ),
                    min_size=1,
                    max_size=5,
                )
            }
        ),
        st.fixed_dictionaries(
            {
                "prompt": st.one_of(
                    st.text(max_size=500), st.lists(st.integers(0, 50_000), min_size=1, max_size=30)
                )
            }
        ),
    ).map(lambda extra: {**body, **extra})
)
valid_headers = st.fixed_dictionaries(
    {},
    optional={
        "x-slo-ttft-ms": st.integers(1, 60_000).map(str),
        "x-slo-tpot-ms": st.integers(1, 1000).map(str),
        "x-slo-class": st.sampled_from(["interactive", "batch"]),
    },
)

raw_bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"",
            b"{",
            b"null",
            b"[]",
            b'{"model": "fuzz-model", "prompt": "a\\ud800"}',
            b'{"model": "fuzz-model", "prompt": "\xed\xa0\x80"}',
            b'{"model": "fuzz-model", "prompt": "p", "max_tokens": NaN}',
            b'{"model": "fuzz-model", "prompt": "p", "max_tokens": ' + b"9" * 5000 + b"}",
            b'{"model": "fuzz-model", "messages": ' + b"[" * 3000 + b"]" * 3000 + b"}",
            b'{"a": ' * 500 + b"1" + b"}" * 500,
        ]
    ),
)

header_values = st.one_of(
    st.sampled_from(["", "0", "-5", "1e309", "nan", "abc", "interactive", "batch", "x" * 2000]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
    st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
slo_headers = st.fixed_dictionaries(
    {},
    optional={
        "x-slo-ttft-ms": _field(st.integers(1, 60_000).map(str), header_values),
        "x-slo-tpot-ms": _field(st.integers(1, 1000).map(str), header_values),
        "x-slo-class": _field(st.sampled_from(["interactive", "batch"]), header_values),
        "x-request-id": _field(st.text("abc123-_.:", min_size=1, max_size=20), header_values),
        "authorization": header_values,
        "accept": _field(st.sampled_from(["*/*", "text/event-stream"]), header_values),
        "content-type": _field(st.just("application/json"), header_values),
    },
)
paths = st.one_of(
    st.sampled_from(OPENAI_PATHS),
    st.sampled_from([p + "/" for p in OPENAI_PATHS]),
    st.sampled_from(
        [
            "/",
            "/health",
            "/ready",
            "/metrics",
            "/v1",
            "/v1/",
            "/v1/embeddings",
            "/v1/chat/completions?x=1",
            "/v1/%2e%2e/admin",
            "/v1/chat%2Fcompletions",
            "//v1/models",
            "/v1/models/../../admin/stats",
            "/admin",
        ]
    ),
    st.text(alphabet="abc/%.?=&-_~0123456789", max_size=30).map(lambda s: "/v1/" + s),
)
methods = st.sampled_from(
    ["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "BREW"]
)


# --- the client ---------------------------------------------------------------------------


def _header_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def send(
    target: Target, method: str, path: str, headers: dict[str, Any], body: bytes
) -> tuple[int, bytes, bytes]:
    """One raw HTTP/1.1 request on a new connection; (status, headers, body)."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: fuzz", b"Connection: close"]
    lines += [name.encode() + b": " + _header_bytes(value) for name, value in headers.items()]
    lines.append(b"Content-Length: " + str(len(body)).encode())
    request = b"\r\n".join(lines) + b"\r\n\r\n" + body
    with socket.create_connection((target.host, target.port), timeout=ANSWER_WITHIN_S) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):  # a hang raises socket.timeout: the test fails
            chunks.append(chunk)
    answer = b"".join(chunks)
    head, _, payload = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head, payload


def check(method: str, status: int, head: bytes, payload: bytes) -> None:
    TALLY[str(status)] += 1
    assert status < 500, (status, head, payload[:500])
    if 400 <= status < 500 and method != "HEAD":
        body = json.loads(_dechunk(head, payload))
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str)
        TALLY[f"{status} {body['error']['param'] or body['error']['code']}"] += 1


def _dechunk(head: bytes, payload: bytes) -> bytes:
    if b"transfer-encoding: chunked" not in head.lower():
        return payload
    out, rest = [], payload
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out)


# --- the properties -----------------------------------------------------------------------


@given(
    body=st.one_of(chat_bodies, completion_bodies),
    headers=slo_headers,
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
)
def test_generation_bodies(
    gateway: Target, body: dict[str, Any], headers: dict[str, Any], path: str
) -> None:
    headers = {"content-type": "application/json", **headers}
    raw = json.dumps(body, allow_nan=False).encode("utf-8", "surrogatepass")
    status, head, payload = send(gateway, "POST", path, headers, raw)
    check("POST", status, head, payload)


@given(body=valid_bodies, headers=valid_headers)
def test_valid_requests(gateway: Target, body: dict[str, Any], headers: dict[str, Any]) -> None:
    """Valid bodies: answered 200, or refused with a 4xx the client can act on."""
    if "stream_options" in body and not body["stream"]:
        body = {**body, "stream": True}
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    raw = json.dumps(body).encode("utf-8", "surrogatepass")
    status, head, payload = send(
        gateway, "POST", path, {"content-type": "application/json", **headers}, raw
    )
    check("POST", status, head, payload)
    assert status in (200, 400, 429), (status, payload[:300])


@given(method=methods, path=paths, headers=slo_headers, body=raw_bodies)
def test_methods_paths_and_raw_bytes(
    gateway: Target, method: str, path: str, headers: dict[str, Any], body: bytes
) -> None:
    status, head, payload = send(gateway, method, path, headers, body)
    check(method, status, head, payload)


def test_healthy_afterwards_with_nothing_in_flight(gateway: Target) -> None:
    """Runs after the properties (file order): the gateway still serves, holds no slot."""
    status, _, _ = send(gateway, "GET", "/health", {}, b"")
    assert status == 200
    body = {"model": FUZZ_MODEL, "prompt": "still here?", "max_tokens": 3, "ignore_eos": True}
    status, _head, payload = send(
        gateway,
        "POST",
        "/v1/completions",
        {"content-type": "application/json"},
        json.dumps(body).encode(),
    )
    assert status == 200, payload
    _, _, metrics = send(gateway, "GET", "/metrics", {}, b"")
    text = _dechunk(b"", metrics).decode()
    in_flight = [line for line in text.splitlines() if line.startswith("sluice_backend_in_flight{")]
    queued = [line for line in text.splitlines() if line.startswith("sluice_queue_depth{")]
    assert in_flight, text[:500]
    assert all(line.endswith(" 0.0") for line in in_flight + queued), in_flight + queued
