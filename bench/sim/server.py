"""One simulated vLLM OpenAI-compatible server over an Engine.

Besides vLLM's endpoints it has ``/sim/faults`` (arm failures for tests: reset before the
response headers, reset after N streamed tokens, refuse) and ``/sim/stats``.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bench.sim.engine import FINISHED, Engine, QueueFull, SimRequest
from bench.sim.profiles import Profile

VERSION = "0.32.0"
_WORD = re.compile(r"\w+|[^\w\s]")
_VOCAB = ("the", "a", "model", "token", "of", "and", "to", "in", "serve", "latency", "is", "fast")


def count_tokens(text: str) -> int:
    """A cheap stand-in for a tokenizer: words and punctuation marks."""
    return max(1, len(_WORD.findall(text)))


def prompt_text(body: dict[str, Any], chat: bool) -> str:
    if chat:
        parts = []
        for message in body.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return "\n".join(parts)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        return " ".join(str(p) for p in prompt)
    return str(prompt)


def vllm_error(message: str, error_type: str, status: int) -> web.Response:
    body = {"error": {"message": message, "type": error_type, "param": None, "code": status}}
    return web.json_response(body, status=status)


@dataclass
class Faults:
    """Armed failures; each count is consumed by the requests it hits."""

    reset_before_headers: int = 0
    reset_after_tokens: int | None = None
    reset_streams: int = 0


class _EngineCollector(Collector):
    def __init__(self, server: SimServer) -> None:
        self._server = server

    def collect(self) -> list[Metric]:
        engine, model = self._server.engine, self._server.model
        labels = ["engine", "model_name"]
        values = ["0", model]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        c = engine.counters
        success = CounterMetricFamily(
            "vllm:request_success", "Finished requests", labels=[*labels, "finished_reason"]
        )
        success.add_metric([*values, "length"], c.finished)
        return [
            gauge("vllm:num_requests_running", "Running requests", len(engine.running)),
            gauge("vllm:num_requests_waiting", "Waiting requests", len(engine.waiting)),
            gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 0..1", engine.kv_usage),
            counter("vllm:prompt_tokens", "Prefilled tokens", c.prompt_tokens),
            counter("vllm:generation_tokens", "Generated tokens", c.generation_tokens),
            counter("vllm:num_preemptions", "Preemptions", c.preemptions),
            counter("vllm:admission_rejections", "Rejected: queue full", c.rejected),
            success,
        ]


class SimServer:
    def __init__(
        self,
        profile: Profile,
        *,
        model: str = "sim-model",
        seed: int = 0,
        mean_output_tokens: float = 200.0,
        priority_scheduling: bool = False,
        max_queued: int | None = None,
    ) -> None:
        self.profile = profile
        self.model = model
        self.engine = Engine(
            profile, seed=seed, priority_scheduling=priority_scheduling, max_queued=max_queued
        )
        self.faults = Faults()
        self.received: list[dict[str, Any]] = []
        self.received_headers: list[dict[str, str]] = []
        self.adapters: dict[str, str] = {}
        self._rng = random.Random(seed + 7919)
        self._mean_output = mean_output_tokens
        self._registry = CollectorRegistry()
        self._registry.register(_EngineCollector(self))

    def app(self) -> web.Application:
        app = web.Application()
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/v1/load_lora_adapter", self._load_lora)
        app.router.add_post("/sim/faults", self._set_faults)
        app.router.add_get("/sim/stats", self._stats)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self.engine.start()

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.engine.stop()

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _version(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def _models(self, _request: web.Request) -> web.Response:
        card = {
            "id": self.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.model,
            "parent": None,
            "max_model_len": self.profile.max_model_len,
        }
        cards = [card]
        for name, path in self.adapters.items():
            cards.append({**card, "id": name, "root": path, "parent": self.model})
        return web.json_response({"object": "list", "data": cards})

    async def _load_lora(self, request: web.Request) -> web.Response:
        body = await request.json()
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not isinstance(path, str):
            return vllm_error("lora_name and lora_path are required", "BadRequestError", 400)
        if name in self.adapters:
            return vllm_error(
                f"The lora adapter '{name}' has already been loaded.", "BadRequestError", 400
            )
        self.adapters[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry),
            headers={"Content-Type": "text/plain; version=0.0.4"},
        )

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        chat = "messages" in body
        count = count_tokens(prompt_text(body, chat))
        return web.json_response(
            {
                "count": count,
                "max_model_len": self.profile.max_model_len,
                "tokens": list(range(count)),
            }
        )

    async def _set_faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.faults = Faults(**body)
        return web.json_response({"ok": True})

    async def _stats(self, _request: web.Request) -> web.Response:
        c = self.engine.counters
        return web.json_response(
            {
                "running": len(self.engine.running),
                "waiting": len(self.engine.waiting),
                "finished": c.finished,
                "aborted": c.aborted,
                "received": len(self.received),
            }
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    def _output_tokens(self, body: dict[str, Any], prompt_tokens: int) -> int:
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if not isinstance(limit, int):
            limit = self.profile.max_model_len - prompt_tokens
        if body.get("ignore_eos"):
            return int(limit)
        drawn = max(1, round(self._rng.expovariate(1.0 / self._mean_output)))
        floor = body.get("min_tokens")
        return min(limit, max(drawn, floor if isinstance(floor, int) else 0))

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        if self.faults.reset_before_headers > 0:
            self.faults.reset_before_headers -= 1
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(1)  # cancelled at once where handlers cancel on disconnect
            return web.Response(status=500)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return vllm_error("invalid JSON body", "BadRequestError", 400)
        self.received.append(body)
        self.received_headers.append(dict(request.headers))
        if body.get("model") != self.model and body.get("model") not in self.adapters:
            return vllm_error(
                f"The model `{body.get('model')}` does not exist.", "NotFoundError", 404
            )
        prompt_tokens = count_tokens(prompt_text(body, chat))
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        if prompt_tokens + int(limit) > self.profile.max_model_len:
            return vllm_error(
                f"This model's maximum context length is {self.profile.max_model_len} tokens. "
                f"However, you requested {prompt_tokens + int(limit)} tokens.",
                "BadRequestError",
                400,
            )
        priority = body.get("priority") if isinstance(body.get("priority"), int) else 0
        try:
            sim = self.engine.submit(
                prompt_tokens, self._output_tokens(body, prompt_tokens), priority
            )
        except QueueFull:
            return vllm_error("The engine is currently busy.", "ServiceUnavailableError", 503)
        try:
            if body.get("stream"):
                return await self._stream(request, body, sim, chat)
            return await self._complete(body, sim, chat)
        finally:
            self.engine.abort(sim)

    async def _complete(self, body: dict[str, Any], sim: SimRequest, chat: bool) -> web.Response:
        while await sim.tokens.get() != FINISHED:
            pass
        text = " ".join(_VOCAB[i % len(_VOCAB)] for i in range(sim.generated))
        usage = _usage(sim)
        created = int(time.time())
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
            payload = {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": created,
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
            payload = {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": created,
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            }
        return web.json_response(payload)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], sim: SimRequest, chat: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        base = {
            "id": ident,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": body["model"],
        }
        reset_after = None
        if self.faults.reset_streams > 0 and self.faults.reset_after_tokens is not None:
            self.faults.reset_streams -= 1
            reset_after = self.faults.reset_after_tokens
        if chat:
            first = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            await response.write(_sse({**base, "choices": [first]}))
        while True:
            index = await sim.tokens.get()
            if index == FINISHED:
                break
            if reset_after is not None and index > reset_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            last = index >= sim.output_tokens
            word = _VOCAB[(index - 1) % len(_VOCAB)]
            finish = "length" if last else None
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": {"content": " " + word},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            else:
                choice = {
                    "index": 0,
                    "text": " " + word,
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": None,
                }
            await response.write(_sse({**base, "choices": [choice]}))
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            await response.write(_sse({**base, "choices": [], "usage": _usage(sim)}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _usage(sim: SimRequest) -> dict[str, int]:
    return {
        "prompt_tokens": sim.prompt_tokens,
        "completion_tokens": sim.generated,
        "total_tokens": sim.prompt_tokens + sim.generated,
    }


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
