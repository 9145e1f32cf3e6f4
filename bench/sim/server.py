"""One simulated vLLM OpenAI-compatible server over an Engine.

Besides vLLM's endpoints it has ``/sim/faults`` (arm failures for tests: reset before the
response headers, reset after N streamed tokens) and ``/sim/stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bench.sim.engine import FINISHED, Engine, QueueFull, SimRequest
from bench.sim.lengths import LengthDistribution, LengthTable
from bench.sim.metrics import VllmMetrics
from bench.sim.prefix_cache import VOCAB, reply_id, reply_text, split_blocks, token_ids
from bench.sim.profiles import Profile
from predictor.features import content_text

VERSION = "0.32.0"
_WORD = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """A cheap stand-in for a tokenizer: words and punctuation marks."""
    return max(1, len(_WORD.findall(text)))


def prompt_texts(body: dict[str, Any], chat: bool) -> tuple[str, str]:
    """(all prompt text, the text that identifies the prompt: the last user turn)."""
    if chat:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        texts = [content_text(m.get("content")) for m in messages]
        users = [content_text(m.get("content")) for m in messages if m.get("role") == "user"]
        return "\n".join(texts), users[-1] if users else ""
    prompt = body.get("prompt", "")
    text = " ".join(str(p) for p in prompt) if isinstance(prompt, list) else str(prompt)
    return text, text


def vllm_error(
    message: str, error_type: str, status: int, param: str | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": status}}
    return web.json_response(body, status=status)


class BadRequest(Exception):
    """A request vLLM would refuse with 400; ``kind`` is vLLM's error type for it."""

    def __init__(self, message: str, param: str | None, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.param = param
        self.kind = kind


@dataclass
class Faults:
    """Armed failures; each count is consumed by the requests it hits."""

    reset_before_headers: int = 0
    reset_after_tokens: int | None = None
    reset_streams: int = 0
    fail_lora_loads: int = 0  # adapter loads answered with an error


@dataclass(frozen=True, slots=True)
class _Parsed:
    body: dict[str, Any]
    chat: bool
    prompt_tokens: int
    output_tokens: int
    priority: int
    finish_reason: str
    block_hashes: tuple[int, ...] = ()
    tail: tuple[int, ...] = ()  # the prompt's token ids after its last full block
    prompt_ids: tuple[int, ...] = ()  # kept only for return_token_ids


class SimServer:
    def __init__(
        self,
        profile: Profile,
        *,
        model: str = "sim-model",
        seed: int = 0,
        lengths: LengthTable | None = None,
        distribution: LengthDistribution | None = None,
        priority_scheduling: bool = False,
        max_queued: int | None = None,
        prefix_caching: bool = True,
        prompt_tokens_details: bool = False,
        max_loras: int | None = None,
        lora_load_s: float = 0.0,
    ) -> None:
        self.profile = profile
        # vLLM's --max-loras: adapters in one batch, reported in vllm:lora_requests_info (as
        # vLLM, more may be registered; the batch limit itself is not modelled). None: no
        # LoRA metric.
        self.max_loras = max_loras
        self.lora_load_s = lora_load_s  # how long a load takes
        self.model = model
        self.prompt_tokens_details = prompt_tokens_details  # vLLM's flag of that name
        self.lengths = lengths or LengthTable()
        self.distribution = distribution or LengthDistribution()
        self.engine = Engine(
            profile,
            seed=seed,
            priority_scheduling=priority_scheduling,
            max_queued=max_queued,
            prefix_caching=prefix_caching,
        )
        self.metrics = VllmMetrics(self.engine, model, max_loras)
        self.engine.on_token = self.metrics.on_token
        self.engine.on_finish = self.metrics.on_finish
        self.faults = Faults()
        self.received: list[dict[str, Any]] = []
        self.received_headers: list[dict[str, str]] = []
        self.adapters: dict[str, str] = {}
        self.lora_loads = self.lora_unloads = self.lora_failed = 0
        self._loading: set[str] = set()
        self._rng = random.Random(seed + 7919)
        self._engine_task: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.cleanup_ctx.append(self._lifespan)
        router = app.router
        router.add_post("/v1/chat/completions", self._chat)
        router.add_post("/v1/completions", self._completions)
        router.add_get("/v1/models", self._models)
        router.add_get("/health", self._health)
        router.add_get("/version", self._version)
        router.add_get("/load", self._load)
        router.add_get("/metrics", self._metrics)
        router.add_post("/tokenize", self._tokenize)
        router.add_post("/detokenize", self._detokenize)
        router.add_post("/v1/load_lora_adapter", self._load_lora)
        router.add_post("/v1/unload_lora_adapter", self._unload_lora)
        router.add_post("/sim/faults", self._set_faults)
        router.add_get("/sim/stats", self._stats)
        return app

    async def _lifespan(self, _app: web.Application) -> Any:
        self._engine_task = asyncio.create_task(self.engine.run())
        yield
        self._engine_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._engine_task

    # -- plain endpoints ------------------------------------------------------------------

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _version(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def _load(self, _request: web.Request) -> web.Response:
        load = len(self.engine.running) + len(self.engine.waiting)
        return web.json_response({"server_load": load})

    async def _models(self, _request: web.Request) -> web.Response:
        card = {
            "id": self.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.model,
            "parent": None,
            "max_model_len": self.profile.max_model_len,
            "permission": [],
        }
        cards = [card]
        for name, path in self.adapters.items():
            cards.append({**card, "id": name, "root": path, "parent": self.model})
        return web.json_response({"object": "list", "data": cards})

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.exposition(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    def _unknown_model(self, body: dict[str, Any]) -> web.Response | None:
        """vLLM's 404 for a model it does not serve (nor any adapter of it)."""
        if body.get("model") == self.model or body.get("model") in self.adapters:
            return None
        aliases = ", ".join([self.model, *self.adapters])
        return vllm_error(
            f"The model `{body.get('model')}` does not exist. Valid aliases: {aliases}.",
            "NotFoundError",
            404,
            "model",
        )

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        if body is None:
            return vllm_error("invalid JSON body", "BadRequestError", 400)
        if "model" in body:  # vLLM counts with the served model's tokenizer when none is named
            unknown = self._unknown_model(body)
            if unknown is not None:
                return unknown
        text, _ = prompt_texts(body, "messages" in body)
        count = count_tokens(text)
        return web.json_response(
            {
                "count": count,
                "max_model_len": self.profile.max_model_len,
                "tokens": list(range(count)),
                "token_strs": None,
            }
        )

    async def _detokenize(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        tokens = body.get("tokens") if body else None
        if not isinstance(tokens, list):
            return vllm_error("tokens must be a list", "BadRequestError", 400)
        return web.json_response({"prompt": " ".join(VOCAB[int(t) % len(VOCAB)] for t in tokens)})

    async def _load_lora(self, request: web.Request) -> web.Response:
        body = await _json_object(request) or {}
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not isinstance(path, str):
            return vllm_error("lora_name and lora_path are required", "BadRequestError", 400)
        if name in self.adapters or name in self._loading:
            return vllm_error(
                f"The lora adapter '{name}' has already been loaded.", "BadRequestError", 400
            )
        if self.faults.fail_lora_loads > 0:
            self.faults.fail_lora_loads -= 1
            self.lora_failed += 1
            return vllm_error(
                f"Loading lora {name} failed: No adapter found for {path}",
                "NotFoundError",
                404,
            )
        self._loading.add(name)  # its slot is taken now; it serves once loaded
        try:
            await asyncio.sleep(self.lora_load_s)
        finally:
            self._loading.discard(name)
        self.adapters[name] = path
        self.lora_loads += 1
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload_lora(self, request: web.Request) -> web.Response:
        body = await _json_object(request) or {}
        name = body.get("lora_name")
        if not isinstance(name, str):
            return vllm_error("lora_name is required", "BadRequestError", 400)
        if self.adapters.pop(name, None) is None:
            return vllm_error(
                f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404, "lora_name"
            )
        self.lora_unloads += 1
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def _set_faults(self, request: web.Request) -> web.Response:
        self.faults = Faults(**(await request.json()))
        return web.json_response({"ok": True})

    async def _stats(self, _request: web.Request) -> web.Response:
        c = self.engine.counters
        return web.json_response(
            {
                "running": len(self.engine.running),
                "waiting": len(self.engine.waiting),
                "finished": c.finished,
                "aborted": c.aborted,
                "preemptions": c.preemptions,
                "received": len(self.received),
            }
        )

    # -- generation -----------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    def _parse(self, body: dict[str, Any], chat: bool) -> _Parsed:
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest(
                    "1 validation error: messages: Field required", "body.messages", "Bad Request"
                )
        elif not body.get("prompt"):
            raise BadRequest(
                "Either prompt or prompt_embeds must be provided and non-empty.", "prompt"
            )
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
            raise BadRequest(
                "1 validation error: max_tokens: Input should be a valid integer",
                "body.max_tokens",
                "Bad Request",
            )
        if limit is not None and limit < 1:
            raise BadRequest(f"max_tokens must be at least 1, got {limit}.", "max_tokens")
        max_len = self.profile.max_model_len
        if limit is not None and limit > max_len:
            raise BadRequest(
                f"max_tokens={limit} cannot be greater than max_model_len={max_len}. "
                "Please request fewer output tokens.",
                "max_tokens",
            )
        given = _token_prompt(body) if not chat else None
        text, key = prompt_texts(body, chat)
        known = self.lengths.lookup(key) if given is None else None
        if given is not None:
            prompt_tokens = len(given)
        else:
            prompt_tokens = known.prompt_tokens if known else count_tokens(text)
        if prompt_tokens >= max_len:
            raise BadRequest(
                f"This model's maximum context length is {max_len} tokens. However, your "
                f"prompt contains at least {prompt_tokens} input tokens, which exceeds this "
                "limit even without any output tokens.",
                "input_tokens",
            )
        if limit is not None and prompt_tokens + limit > max_len:
            raise BadRequest(
                f"This model's maximum context length is {max_len} tokens. However, you "
                f"requested {limit} output tokens and your prompt contains {prompt_tokens} "
                f"input tokens, for a total of {prompt_tokens + limit} tokens.",
                "max_tokens",
            )
        ceiling = limit if limit is not None else max_len - prompt_tokens
        if body.get("ignore_eos"):
            output = ceiling
        else:
            natural = known.output_tokens if known else self.distribution.draw(self._rng)
            floor = body.get("min_tokens")
            output = min(ceiling, max(natural, floor if isinstance(floor, int) else 0))
        priority = body.get("priority", 0)
        ids = given if given is not None else token_ids(text, prompt_tokens)
        return _Parsed(
            body,
            chat,
            prompt_tokens,
            max(1, output),
            priority if isinstance(priority, int) else 0,
            "length" if output >= ceiling else "stop",
            *split_blocks(ids, self.profile.block_size),
            prompt_ids=tuple(ids) if body.get("return_token_ids") else (),
        )

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        if self.faults.reset_before_headers > 0:
            self.faults.reset_before_headers -= 1
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(1)  # cancelled at once where handlers cancel on disconnect
            return web.Response(status=500)
        body = await _json_object(request)
        if body is None:
            return vllm_error("1 validation error: JSON decode error", "Bad Request", 400, "body")
        self.received.append(body)
        self.received_headers.append(dict(request.headers))
        unknown = self._unknown_model(body)
        if unknown is not None:
            return unknown
        try:
            parsed = self._parse(body, chat)
        except BadRequest as exc:
            return vllm_error(str(exc), exc.kind, 400, exc.param)
        try:
            sim = self.engine.submit(
                parsed.prompt_tokens,
                parsed.output_tokens,
                parsed.priority,
                block_hashes=parsed.block_hashes,
                tail=parsed.tail,
            )
            sim.finish_reason = parsed.finish_reason
        except QueueFull:
            return vllm_error("The engine is currently busy.", "ServiceUnavailableError", 503)
        try:
            if body.get("stream"):
                return await self._stream(request, parsed, sim)
            return await self._complete(parsed, sim)
        finally:
            self.engine.abort(sim)

    async def _complete(self, parsed: _Parsed, sim: SimRequest) -> web.Response:
        assert sim.tokens is not None
        while await sim.tokens.get() != FINISHED:
            pass
        text = reply_text(sim.generated)
        base = _envelope(parsed, final=True)
        if parsed.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "tool_calls": [],
                    "reasoning_content": None,
                },
                "logprobs": None,
                "finish_reason": parsed.finish_reason,
                "stop_reason": None,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": parsed.finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
        if parsed.body.get("return_token_ids"):
            choice["prompt_token_ids"] = list(parsed.prompt_ids)
            choice["token_ids"] = [reply_id(i) for i in range(sim.generated)]
        usage = self._usage(sim)
        return web.json_response(
            {**base, "choices": [choice], "usage": usage, "prompt_logprobs": None}
        )

    def _usage(self, sim: SimRequest, generated: int | None = None) -> dict[str, Any]:
        return _usage(sim, generated, self.prompt_tokens_details)

    async def _stream(
        self, request: web.Request, parsed: _Parsed, sim: SimRequest
    ) -> web.StreamResponse:
        assert sim.tokens is not None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        base = _envelope(parsed, final=False)
        options = parsed.body.get("stream_options") or {}
        continuous = bool(options.get("continuous_usage_stats"))
        reset_after = None
        if self.faults.reset_streams > 0 and self.faults.reset_after_tokens is not None:
            self.faults.reset_streams -= 1
            reset_after = self.faults.reset_after_tokens
        role_sent = not parsed.chat
        while True:
            index = await sim.tokens.get()
            if index == FINISHED:
                break
            if not role_sent:
                # As vLLM: the chunk with the assistant's role goes with the first token,
                # after prefill, not before it.
                first = {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
                await response.write(_sse({**base, "choices": [first]}))
                role_sent = True
            if reset_after is not None and index > reset_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            # The deltas add up to the whole reply's text, as vLLM's incremental detokenizer's.
            word = ("" if index == 1 else " ") + VOCAB[(index - 1) % len(VOCAB)]
            finish = parsed.finish_reason if index >= sim.output_tokens else None
            if parsed.chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": {"content": word},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            else:
                choice = {
                    "index": 0,
                    "text": word,
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": None,
                }
            chunk: dict[str, Any] = {**base, "choices": [choice]}
            if continuous:
                chunk["usage"] = self._usage(sim, index)
            await response.write(_sse(chunk))
        if options.get("include_usage"):
            await response.write(_sse({**base, "choices": [], "usage": self._usage(sim)}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _token_prompt(body: dict[str, Any]) -> list[int] | None:
    """A completion's prompt given as token ids, as vLLM takes them; else None."""
    prompt = body.get("prompt")
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return prompt
    return None


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _envelope(parsed: _Parsed, *, final: bool) -> dict[str, Any]:
    if parsed.chat:
        kind = "chat.completion" if final else "chat.completion.chunk"
        ident = f"chatcmpl-{uuid.uuid4().hex}"
    else:
        kind, ident = "text_completion", f"cmpl-{uuid.uuid4().hex}"
    return {"id": ident, "object": kind, "created": int(time.time()), "model": parsed.body["model"]}


def _usage(sim: SimRequest, generated: int | None, details: bool) -> dict[str, Any]:
    done = sim.generated if generated is None else generated
    usage: dict[str, Any] = {
        "prompt_tokens": sim.prompt_tokens,
        "total_tokens": sim.prompt_tokens + done,
        "completion_tokens": done,
    }
    if details:  # vLLM reports cached tokens with --enable-prompt-tokens-details only
        usage["prompt_tokens_details"] = {"cached_tokens": sim.cached_tokens}
    return usage


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
