"""Reading and validating OpenAI request bodies, before anything is queued.

The body must be strict UTF-8 JSON (no NaN or Infinity literals, no lone surrogates, no
integers too long to parse, bounded nesting) whose fields match OpenAI's types, as vLLM's own
protocol models check them. Only the fields are checked: the body is forwarded as the client
sent it, so fields the gateway does not know pass through to the engine.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import InvalidRequest, PayloadTooLarge, RequestTimeout

_PositiveInt = Annotated[int, Field(ge=1)]
_Count = Annotated[int, Field(ge=1, le=128)]
_TokenId = Annotated[int, Field(ge=0)]
_Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
_Stop = str | list[str] | None
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow", frozen=True)


class StreamOptions(_Strict):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class _Sampling(_Strict):
    """Fields common to both generation endpoints, with vLLM's ranges."""

    model: Annotated[str, Field(min_length=1)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: _PositiveInt | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    n: _Count | None = 1
    best_of: _Count | None = None
    temperature: Annotated[float, Field(ge=0.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    presence_penalty: _Penalty | None = None
    frequency_penalty: _Penalty | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] | None = None
    seed: int | None = None
    stop: _Stop = None
    stop_token_ids: list[_TokenId] | None = None
    ignore_eos: bool | None = None
    priority: int | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None


class ContentPart(_Strict):
    type: Annotated[str, Field(min_length=1)]
    text: str | None = None


class Message(_Strict):
    role: Annotated[str, Field(min_length=1)]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: _PositiveInt | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


class CompletionRequest(_Sampling):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[_TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[_TokenId], Field(min_length=1)]], Field(min_length=1)]
    )
    echo: bool | None = None
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    suffix: str | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    """What the gateway takes from a valid generation body."""

    model: str
    stream: bool
    wants_usage: bool
    max_tokens: int | None


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_tag(part: str) -> bool:
    """A union branch's name, which pydantic puts in an error's location."""
    return part in _TYPE_TAGS or "[" in part or "-" in part or part[:1].isupper()


def invalid(exc: ValidationError) -> InvalidRequest:
    """The first error as OpenAI reports it: ``param`` is the field's path
    (``messages.0.content``)."""
    first = exc.errors(include_url=False)[0]
    loc = tuple(first["loc"])
    parts = [str(p) for p in loc if isinstance(p, int) or not _is_tag(p)]
    param = ".".join(parts) or None
    alternatives = " (nor any other type the field accepts)" if len(parts) < len(loc) else ""
    where = f"'{param}': " if param else ""
    return InvalidRequest(f"{where}{first['msg']}{alternatives}", param=param)


def _prompts(request: ChatRequest | CompletionRequest) -> int:
    if isinstance(request, ChatRequest):
        return 1
    prompt = request.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        return len(prompt)
    return 1


def _one_sequence(n: int, best_of: int | None, prompts: int) -> None:
    """The guards count one sequence per request (its KV, its place in the batch): a request
    that would run several at once is refused rather than under-counted."""
    for param, value in (("n", n), ("best_of", best_of or 1), ("prompt", prompts)):
        if value > 1:
            raise InvalidRequest(
                f"'{param}' asks for {value} sequences at once; this gateway serves one "
                "sequence per request (send one prompt, n=1, per request), so that its "
                "admission counts what the engine really runs",
                param=param,
            )


def validate_generation(body: dict[str, Any], *, chat: bool) -> Generation:
    """Check a generation body's fields; raise InvalidRequest naming the first bad one."""
    model_class: type[ChatRequest | CompletionRequest] = ChatRequest if chat else CompletionRequest
    try:
        request = model_class.model_validate(body)
    except ValidationError as exc:
        raise invalid(exc) from None
    stream = bool(request.stream)
    if request.stream_options is not None and not stream:
        raise InvalidRequest("'stream_options' needs 'stream': true", param="stream_options")
    limit = request.max_tokens
    if isinstance(request, ChatRequest) and limit is None:
        limit = request.max_completion_tokens
    if request.min_tokens is not None and limit is not None and request.min_tokens > limit:
        raise InvalidRequest("'min_tokens' must not exceed 'max_tokens'", param="min_tokens")
    _one_sequence(request.n or 1, request.best_of, _prompts(request))
    options = request.stream_options
    return Generation(
        model=request.model,
        stream=stream,
        wants_usage=bool(options and options.include_usage),
        max_tokens=limit,
    )


async def read_json_object(request: web.Request, limit: int, timeout_s: float) -> dict[str, Any]:
    """The body as a JSON object: read within ``timeout_s``, strict UTF-8, finite numbers,
    no lone surrogates. Anything else is the client's error (400, 408 or 413)."""
    return parse_json_object(await read_bytes(request, limit, timeout_s))


async def read_bytes(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The body's bytes, at most ``limit`` of them (413) and within ``timeout_s`` (408)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds {limit}")
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes") from exc
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g}s") from None


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        body = _loads(text)
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN, integers past Python's digit limit
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(text):
        _check_encodable(body)
    return body


def _check_encodable(body: dict[str, Any]) -> None:
    """A ``\\ud800``-style escape made a string; unpaired, no engine can encode it."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            "request body has a lone UTF-16 surrogate (\\ud800-\\udfff) in a string: "
            "it is not valid Unicode text"
        ) from None
