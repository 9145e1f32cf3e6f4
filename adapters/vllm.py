"""vLLM's OpenAI-compatible server as a backend: requests, stream parsing, probing.

Connections are pooled in one ``aiohttp.ClientSession`` shared by every adapter of a gateway.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from adapters.base import (
    BackendTimeout,
    BackendUnreachable,
    EngineLoad,
    ProbeResult,
    StreamBroken,
    StreamEvent,
    Timeouts,
    choice_text,
)
from adapters.prom import collect_samples, first_labels
from adapters.sse import SseSplitter, event_data

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"
CACHE_INFO = "vllm:cache_config_info"
LORA_INFO = "vllm:lora_requests_info"
_SCRAPED = (RUNNING, WAITING, KV_USAGE, KV_USAGE_OLD)

_UNREACHABLE = (
    aiohttp.ClientConnectorError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    aiohttp.ClientPayloadError,
    ConnectionError,
)


def count_tokens(chunk: Mapping[str, Any]) -> int:
    """Tokens a chat or completion chunk carries: one per choice with new text or tool calls."""
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return 0
    tokens = 0
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
                tokens += 1
        elif choice.get("text"):
            tokens += 1
    return tokens


def parse_event(raw: bytes) -> StreamEvent:
    """Interpret one SSE event of a vLLM stream."""
    data = event_data(raw)
    if data is None:
        return StreamEvent(raw=raw)
    if data.strip() == "[DONE]":
        return StreamEvent(raw=raw, done=True)
    try:
        payload = json.loads(data)
    except json.JSONDecodeError:
        return StreamEvent(raw=raw)
    if not isinstance(payload, dict):
        return StreamEvent(raw=raw)
    usage = payload.get("usage")
    choices = payload.get("choices")
    error = payload.get("error")
    return StreamEvent(
        raw=raw,
        data=payload,
        tokens=count_tokens(payload),
        text=choice_text(payload),
        usage=usage if isinstance(usage, dict) else None,
        usage_only=isinstance(usage, dict) and choices == [],
        error=error if isinstance(error, dict) else None,
    )


class VllmResponse:
    """An upstream answer whose headers have arrived."""

    def __init__(self, response: aiohttp.ClientResponse, idle_s: float) -> None:
        self._response = response
        self._idle_s = idle_s
        self.status = response.status
        self.content_type = response.content_type

    async def read(self) -> bytes:
        try:
            async with asyncio.timeout(self._idle_s):
                return await self._response.read()
        except TimeoutError as exc:
            raise StreamBroken(f"no answer within {self._idle_s:g}s") from exc
        except _UNREACHABLE as exc:
            raise StreamBroken(f"backend closed the connection: {exc}") from exc

    async def events(self) -> AsyncIterator[StreamEvent]:
        splitter = SseSplitter()
        content = self._response.content
        while True:
            try:
                async with asyncio.timeout(self._idle_s):
                    chunk = await content.readany()
            except TimeoutError as exc:
                raise StreamBroken(f"no chunk within {self._idle_s:g}s") from exc
            except _UNREACHABLE as exc:
                raise StreamBroken(f"backend closed the stream: {exc}") from exc
            if not chunk:
                break
            for raw in splitter.feed(chunk):
                yield parse_event(raw)
        if splitter.rest().strip():
            raise StreamBroken("stream ended inside an event")

    def close(self) -> None:
        """Give the connection back to the pool when the body was read to its end; otherwise
        drop it, which makes vLLM abort the request and free its slot."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class VllmAdapter:
    """One vLLM OpenAI-compatible server."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, api_key: str | None = None
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    @property
    def base_url(self) -> str:
        return self._base_url

    def prepare(self, body: dict[str, Any], *, wants_usage: bool) -> dict[str, Any]:
        if not body.get("stream"):
            return body
        # Ask for the usage chunk even when the client did not: the gateway needs exact
        # token counts. The proxy drops that chunk again when the client did not ask for it.
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        return {**body, "stream_options": options}

    async def send(
        self, method: str, path: str, body: bytes | None, timeouts: Timeouts
    ) -> VllmResponse:
        url = self._base_url + path
        timeout = aiohttp.ClientTimeout(total=None, connect=timeouts.connect_s)
        try:
            async with asyncio.timeout(timeouts.first_byte_s):
                response = await self._session.request(
                    method, url, data=body, headers=self._headers, timeout=timeout
                )
        except TimeoutError as exc:
            raise BackendTimeout(f"{url}: no response within {timeouts.first_byte_s:g}s") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise BackendUnreachable(f"{url}: connect timed out") from exc
        except _UNREACHABLE as exc:
            raise BackendUnreachable(f"{url}: {exc}") from exc
        return VllmResponse(response, timeouts.idle_s)

    async def probe(self, timeout_s: float) -> ProbeResult:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._session.get(
                self._base_url + "/health", timeout=timeout, headers=self._headers
            ) as health:
                if health.status != 200:
                    return ProbeResult(healthy=False, error=f"/health answered {health.status}")
            async with self._session.get(
                self._base_url + "/v1/models", timeout=timeout, headers=self._headers
            ) as models_response:
                listing = await models_response.json(content_type=None)
            load = await self._scrape(timeout)
        except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError, ValueError) as exc:
            return ProbeResult(healthy=False, error=f"{type(exc).__name__}: {exc}")
        cards = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(cards, list):
            return ProbeResult(healthy=False, error="/v1/models has no data list")
        return ProbeResult(
            healthy=True,
            models=tuple(card for card in cards if isinstance(card, dict) and "id" in card),
            load=load,
        )

    async def load_adapter(self, name: str, path: str, timeout_s: float) -> None:
        await self._lora_call(
            "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}, timeout_s
        )

    async def unload_adapter(self, name: str, timeout_s: float) -> None:
        await self._lora_call("/v1/unload_lora_adapter", {"lora_name": name}, timeout_s)

    async def _lora_call(self, path: str, body: dict[str, str], timeout_s: float) -> None:
        try:
            async with self._session.post(
                self._base_url + path,
                json=body,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                status, text = response.status, await response.text()
        except TimeoutError as exc:
            raise BackendTimeout(f"{path}: no answer within {timeout_s:g}s") from exc
        except _UNREACHABLE as exc:
            raise BackendUnreachable(f"{path}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise ValueError(f"{path}: {type(exc).__name__}: {exc}") from exc
        # vLLM answers 404 to an unload of an adapter it does not hold (unloaded already),
        # and 400 "has already been loaded" to a load of one it holds (loaded already).
        done = (path.endswith("unload_lora_adapter") and status == 404) or (
            status == 400 and "already been loaded" in text
        )
        if status != 200 and not done:
            raise ValueError(f"{path} answered {status}: {text[:200]}")

    async def tokenize(self, model: str, text: str, timeout_s: float) -> int:
        body = {"model": model, "prompt": text, "add_special_tokens": False}
        try:
            async with self._session.post(
                self._base_url + "/tokenize",
                json=body,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                answer = await response.json(content_type=None)
                status = response.status
        except TimeoutError as exc:
            raise BackendTimeout(f"/tokenize: no answer within {timeout_s:g}s") from exc
        except _UNREACHABLE as exc:
            raise BackendUnreachable(f"/tokenize: {exc}") from exc
        except (aiohttp.ClientError, json.JSONDecodeError) as exc:
            raise ValueError(f"/tokenize: {type(exc).__name__}: {exc}") from exc
        count = answer.get("count") if isinstance(answer, dict) else None
        if status != 200 or not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"/tokenize answered {status} without a count")
        return count

    async def _scrape(self, client_timeout: aiohttp.ClientTimeout) -> EngineLoad | None:
        async with self._session.get(
            self._base_url + "/metrics", timeout=client_timeout, headers=self._headers
        ) as response:
            if response.status != 200:
                return None
            text = await response.text()
        return parse_load(text)


def parse_load(text: str) -> EngineLoad:
    """Running, waiting and KV usage from vLLM's metrics, under current or older names."""
    found = collect_samples(text, _SCRAPED)
    running = found.get(RUNNING)
    waiting = found.get(WAITING)
    # One sample per engine (data parallel): counts add up, usage fractions average.
    kv = found.get(KV_USAGE) or found.get(KV_USAGE_OLD)
    info = first_labels(text, CACHE_INFO)
    try:
        capacity: int | None = int(info["num_gpu_blocks"]) * int(info["block_size"])
    except (KeyError, ValueError):
        capacity = None
    try:
        max_loras: int | None = int(first_labels(text, LORA_INFO)["max_lora"])
    except (KeyError, ValueError):
        max_loras = None
    return EngineLoad(
        running=sum(running) if running else None,
        waiting=sum(waiting) if waiting else None,
        kv_usage=sum(kv) / len(kv) if kv else None,
        kv_capacity_tokens=capacity,
        max_loras=max_loras,
    )
