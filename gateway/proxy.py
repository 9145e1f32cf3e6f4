"""One generation request's life: queue, dispatch (retrying once), relay, account.

Nothing is sent to the client until the upstream answer's headers have arrived, so a backend
that refuses or resets before its first byte can be replaced by another one unseen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from adapters.base import (
    BackendTimeout,
    BackendUnreachable,
    StreamBroken,
    StreamEvent,
    Timeouts,
    UpstreamResponse,
    choice_text,
)
from gateway.errors import (
    NoBackendAvailable,
    SloUnattainable,
    SluiceError,
    UpstreamError,
    UpstreamTimeout,
    error_body,
)
from gateway.estimate import demand
from gateway.fleet import Fleet, Seat
from gateway.metrics import GatewayMetrics
from gateway.middleware import is_openai_error
from gateway.prefix_index import ReplyText, answer_hashes, chunk_hashes, prompt_text
from gateway.records import RecordLog, RequestRecord
from gateway.scheduling.scheduler import Lease, Scheduler
from gateway.scheduling.snapshot import Demand, Route
from gateway.slots import Slot, Slots
from gateway.state.sharing import LoadSharing
from predictor.online import SampleLog

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
BACKEND_HEADER = "x-sluice-backend"
PREDICTED_HEADER = "x-sluice-predicted-tokens"
SERVED_MODEL_HEADER = "x-sluice-served-model"
_CLIENT_GONE = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


@dataclass(frozen=True, slots=True)
class GenerationCall:
    """A validated generation request, gateway-only fields already removed from ``body``."""

    endpoint: str
    body: dict[str, Any]
    wants_usage: bool
    session: str | None = None  # x-session-id, or the body's ``user``
    variants: tuple[Route, ...] = ()  # its model's variants, in order (config ``variants``)


class Proxy:
    def __init__(
        self,
        fleet: Fleet,
        scheduler: Scheduler[Seat],
        metrics: GatewayMetrics,
        records: RecordLog,
        samples: SampleLog,
        *,
        timeouts: Timeouts,
        queue_timeout_s: float,
        send_timeout_s: float = 30.0,
        sharing: LoadSharing | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._slots = Slots(scheduler, metrics, sharing, clock)
        self._fleet = fleet
        self._scheduler = scheduler
        self._metrics = metrics
        self._records = records
        self._samples = samples
        self._timeouts = timeouts
        self._queue_timeout_s = queue_timeout_s
        self._send_timeout_s = send_timeout_s
        self._clock = clock

    def refused(self, record: RequestRecord, exc: SluiceError, reason: str) -> None:
        """A request refused before it reached the queue (a tenant's rate limit)."""
        record.status, record.outcome, record.reject_reason = exc.status, "rejected", reason
        self._finish(record)

    async def generate(
        self, request: web.Request, call: GenerationCall, record: RequestRecord
    ) -> web.StreamResponse:
        """Queue, dispatch (once more elsewhere if the backend cannot be reached), relay.
        The slot is held by ``Slots.hold`` for as long as its attempt lasts."""
        wanted = self._demand(call, record)
        until = self._clock() + self._queue_timeout_s
        excluded: set[str] = set()
        try:
            try:
                for attempt in (1, 2):
                    async with self._slots.hold(wanted, excluded, until) as slot:
                        upstream = await self._send(call, record, slot, attempt)
                        if upstream is None:
                            excluded.add(slot.lease.backend)
                            continue
                        reply = ReplyText() if self._scheduler.prefix is not None else None
                        try:
                            return await self._relay(
                                request, upstream, call, record, slot.lease, reply
                            )
                        finally:
                            upstream.close()
                            self._learn_prefix(slot.lease, call, record, reply)
            except NoBackendAvailable as exc:
                if not excluded:
                    raise
                raise UpstreamError(
                    f"backend {record.backend} could not be reached, and no other backend was "
                    "free to retry on"
                ) from exc
            raise UpstreamError("the backend could not be reached, nor another one on retry")
        except SluiceError as exc:
            if record.outcome == "pending":
                record.status = exc.status
                if isinstance(exc, SloUnattainable):
                    record.outcome, record.reject_reason = "rejected", exc.reason
                elif isinstance(exc, NoBackendAvailable):
                    record.outcome, record.reject_reason = "rejected", "no_backend"
                else:
                    record.outcome = "failed"
            raise
        except asyncio.CancelledError:
            record.outcome = "cancelled"
            raise
        finally:
            self._finish(record)

    def _demand(self, call: GenerationCall, record: RequestRecord) -> Demand:
        assert record.estimate is not None
        prefix = chunk_hashes(prompt_text(call.body)) if self._scheduler.prefix else ()
        return demand(
            record.model,
            record.arrival,
            record.slo,
            record.estimate,
            record.tenant,
            prefix,
            call.session,
            call.variants,
        )

    async def _send(
        self, call: GenerationCall, record: RequestRecord, slot: Slot, attempt: int
    ) -> UpstreamResponse | None:
        """Send the request on its slot; None when the backend could not be reached (the
        slot is then marked unused, the backend down)."""
        lease = slot.lease
        record.dispatch, record.backend, record.attempts = (
            lease.dispatched_at,
            lease.backend,
            attempt,
        )
        record.served_model = served = lease.model or record.model
        backend = slot.backend
        adapters = self._fleet.adapters
        # Placed to load its LoRA adapter there (the guard counted the load's time): load it.
        if (
            not backend.serves(served)
            and adapters.is_adapter(served)
            and not await adapters.ensure(backend, served, self._timeouts.first_byte_s)
        ):
            slot.served = False
            return None
        self._metrics.admitted.labels(record.model, record.slo.class_name).inc()
        body = call.body
        if record.degraded:  # the variant's name goes upstream
            body = {**body, "model": served}
        if backend.config.priority_scheduling and lease.priority is not None:
            body = {**body, "priority": lease.priority}
        payload = json.dumps(backend.adapter.prepare(body, wants_usage=call.wants_usage))
        try:
            return await backend.adapter.send(
                "POST", call.endpoint, payload.encode(), self._timeouts
            )
        except BackendUnreachable as exc:
            slot.served = False
            log.warning("request %s: backend %s unreachable: %s", record.id, backend.name, exc)
            self._fleet.mark_unreachable(lease.backend, str(exc))
            if attempt == 1:
                self._metrics.retries.labels(record.model).inc()
            return None
        except BackendTimeout as exc:
            log.warning("request %s: backend %s timed out: %s", record.id, backend.name, exc)
            self._fleet.response_failed(backend, "no response headers in time")
            raise UpstreamTimeout(
                f"backend {backend.name} did not start its answer in time"
            ) from exc

    async def _relay(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        call: GenerationCall,
        record: RequestRecord,
        lease: Lease[Seat],
        reply: ReplyText | None,
    ) -> web.StreamResponse:
        """Relay the answer; ``reply``, when given, collects the reply's text."""
        if upstream.status != 200:
            return await self._relay_status(upstream, record, lease)
        if record.stream:
            return await self._relay_stream(request, upstream, call, record, lease, reply)
        return await self._relay_body(upstream, record, lease, reply)

    def _learn_prefix(
        self,
        lease: Lease[Seat],
        call: GenerationCall,
        record: RequestRecord,
        reply: ReplyText | None,
    ) -> None:
        """The prefix index learns from an answer: the cached tokens it reports correct the
        backend's bound, and a complete reply is cached there now beside its prompt."""
        index = self._scheduler.prefix
        if index is None:
            return
        if record.cached_tokens is not None:
            record.expected_cached_tokens = lease.seat.request.cached_tokens
            index.correct(lease.backend, record.expected_cached_tokens, record.cached_tokens)
        text = reply.text if reply is not None else None
        if record.outcome == "ok" and text:
            index.record(lease.backend, answer_hashes(call.body, text))

    def _headers(self, record: RequestRecord) -> dict[str, str]:
        headers = {REQUEST_ID_HEADER: record.id}
        if record.estimate is not None:
            headers[PREDICTED_HEADER] = str(record.estimate.output_tokens)
        if record.backend is not None:
            headers[BACKEND_HEADER] = record.backend
        if record.served_model is not None:
            headers[SERVED_MODEL_HEADER] = record.served_model
        return headers

    async def _relay_status(
        self, upstream: UpstreamResponse, record: RequestRecord, lease: Lease[Seat]
    ) -> web.StreamResponse:
        """A non-200 answer: a valid OpenAI error body passes through unchanged."""
        record.outcome = "upstream_status"
        record.status = upstream.status
        if upstream.status >= 500 and upstream.status != 503:  # 503: the engine is busy
            self._fleet.response_failed(lease.seat.backend, f"HTTP {upstream.status}")
        try:
            data = await upstream.read()
        except StreamBroken:
            data = b""
        if is_openai_error(data):
            return web.Response(
                status=upstream.status,
                body=data,
                content_type="application/json",
                headers=self._headers(record),
            )
        raise UpstreamError(f"backend {record.backend} answered HTTP {upstream.status}")

    async def _relay_body(
        self,
        upstream: UpstreamResponse,
        record: RequestRecord,
        lease: Lease[Seat],
        reply: ReplyText | None,
    ) -> web.StreamResponse:
        try:
            data = await upstream.read()
        except StreamBroken as exc:
            record.outcome, record.status = "failed", UpstreamError.status
            self._broken(record, lease, exc)
            raise UpstreamError(
                f"backend {record.backend} failed before its answer was complete"
            ) from exc
        self._fleet.response_ok(lease.seat.backend)
        record.finish = self._clock()
        try:
            answer = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            answer = None
        if isinstance(answer, dict):
            usage = answer.get("usage")
            if isinstance(usage, dict):
                _take_usage(record, usage)
            if reply is not None:
                reply.add(choice_text(answer))
        record.outcome, record.status = "ok", 200
        return web.Response(
            status=200, body=data, content_type="application/json", headers=self._headers(record)
        )

    async def _relay_stream(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        call: GenerationCall,
        record: RequestRecord,
        lease: Lease[Seat],
        reply: ReplyText | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **self._headers(record),
            },
        )
        record.status = 200
        try:
            await response.prepare(request)
            async for event in upstream.events():
                self._observe(event, record, lease)
                if reply is not None:
                    reply.add(event.text)
                if event.usage_only and not call.wants_usage:
                    continue
                async with asyncio.timeout(self._send_timeout_s):
                    await response.write(event.raw)
        except StreamBroken as exc:
            record.outcome = "failed"
            self._broken(record, lease, exc)
            failure = error_body(
                f"backend {record.backend} failed mid-stream; the reply is incomplete",
                UpstreamError.error_type,
                code="upstream_stream_broken",
            )
            await self._write_quietly(response, f"data: {json.dumps(failure)}\n\n".encode())
            return response
        except _CLIENT_GONE:
            record.outcome = "cancelled"
            return response
        except TimeoutError:
            log.info("request %s: the client stopped reading; its stream is cut", record.id)
            record.outcome = "cancelled"
            return response
        if record.outcome == "pending":
            record.outcome = "ok"
            self._fleet.response_ok(lease.seat.backend)
        await self._write_quietly(response, None)
        return response

    def _broken(self, record: RequestRecord, lease: Lease[Seat], exc: StreamBroken) -> None:
        """A response that broke after it started: the detail goes to the log, not the client."""
        log.warning("request %s: the answer from %s broke: %s", record.id, record.backend, exc)
        self._fleet.response_failed(lease.seat.backend, "response broke after it started")

    def _observe(self, event: StreamEvent, record: RequestRecord, lease: Lease[Seat]) -> None:
        if event.tokens:
            now = self._clock()
            if record.first_token is None:
                record.first_token = now
            record.token_times.extend([now] * event.tokens)
            lease.seat.backend.advance(lease.seat.request, event.tokens, now)
        if event.usage is not None:
            _take_usage(record, event.usage)
        if event.error is not None:
            record.outcome = "failed"

    @staticmethod
    async def _write_quietly(response: web.StreamResponse, data: bytes | None) -> None:
        try:
            if data is not None:
                await response.write(data)
            await response.write_eof()
        except _CLIENT_GONE:
            pass

    def _finish(self, record: RequestRecord) -> None:
        if record.finish is None:
            record.finish = self._clock()
        self._metrics.observe(record)
        self._records.add(record)
        prompt = record.estimate.prompt if record.estimate is not None else None
        # A reply cut off at max_tokens says nothing of its natural length: not a sample.
        if (
            record.outcome == "ok"
            and prompt is not None
            and record.tokens > 0
            and (prompt.max_tokens is None or record.tokens < prompt.max_tokens)
        ):
            self._samples.add(record.id, prompt, record.tokens)


def _take_usage(record: RequestRecord, usage: dict[str, Any] | Any) -> None:
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int):
        record.prompt_tokens = prompt
    if isinstance(completion, int):
        record.completion_tokens = completion
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
        record.cached_tokens = details["cached_tokens"]
