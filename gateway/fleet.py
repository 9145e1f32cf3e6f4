"""Backends as the gateway sees them: health, served models, load, and the probe loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from adapters.base import EngineAdapter, EngineLoad
from adapters.vllm import VllmAdapter
from gateway.config import BackendConfig, LatencyPrior
from gateway.lora import AdapterBook
from gateway.outliers import OutlierRules, OutlierState, may_eject
from gateway.scheduling.latency import ItlModel, ItlParams, PrefillModel, PrefillParams
from gateway.scheduling.snapshot import BackendView, Demand, InFlightView, RollingView
from gateway.state.load import LoadTotals

log = logging.getLogger(__name__)
ITL_WINDOW = 8  # tokens per inter-token-latency observation


@dataclass(eq=False, slots=True)
class InFlight:
    """A request the gateway has dispatched to a backend, as the relay sees it progress."""

    ticket: int
    tpot_s: float
    prompt_tokens: int
    predicted_tokens: int
    reserved_kv: int
    dispatched_at: float
    pending_at_dispatch: int  # prompt tokens awaiting prefill there at dispatch, its own too
    tenant: str | None = None
    cached_tokens: int = 0  # of its prompt, expected in the backend's prefix cache
    model: str = ""  # the model (or LoRA adapter) it was sent for
    first_token_at: float | None = None
    last_token_at: float | None = None
    tokens: int = 0
    window_at: float = 0.0  # start of the current ITL measurement window
    window_tokens: int = 0

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.tokens


def priors(prior: LatencyPrior) -> tuple[PrefillParams, ItlParams]:
    ms = 1e-3
    return (
        PrefillParams(
            prior.prefill_phi_ms * ms,
            prior.prefill_theta_tokens,
            prior.prefill_alpha_ms * ms,
            prior.prefill_beta_ms * ms,
        ),
        ItlParams(
            prior.itl_a_ms * ms, prior.itl_b_ms * ms, prior.itl_c_ms * ms, prior.itl_d_ms * ms
        ),
    )


@dataclass(slots=True)
class Backend:
    """Live state of one backend. Mutated only on the event loop."""

    config: BackendConfig
    adapter: EngineAdapter
    prefill: PrefillModel
    itl: ItlModel
    healthy: bool = False
    discovered: frozenset[str] | None = None
    model_cards: tuple[Mapping[str, Any], ...] = ()
    inflight: dict[int, InFlight] = field(default_factory=dict)
    decoding_count: int = 0  # in flight and past the first token
    decoding_context: int = 0  # their contexts, summed
    dispatched: int = 0
    load: EngineLoad | None = None
    draining: bool = False  # removed from the config: no new requests, in-flight ones finish
    consecutive_failures: int = 0
    last_error: str | None = None
    last_probe: float | None = field(default=None)
    outlier: OutlierState = field(default_factory=OutlierState)

    @classmethod
    def create(cls, config: BackendConfig, adapter: EngineAdapter, prior: LatencyPrior) -> Backend:
        prefill, itl = priors(config.latency_prior or prior)
        return cls(config, adapter, PrefillModel(prefill), ItlModel(itl))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def in_flight(self) -> int:
        return len(self.inflight)

    @property
    def routable(self) -> bool:
        """Takes new requests: healthy, not ejected, active, and not leaving the config."""
        return (
            self.healthy
            and not self.outlier.ejected
            and not self.draining
            and self.config.state == "active"
        )

    @property
    def kv_capacity(self) -> int | None:
        if self.config.kv_capacity_tokens is not None:
            return self.config.kv_capacity_tokens
        return self.load.kv_capacity_tokens if self.load is not None else None

    def pending_prefill(self) -> int:
        return sum(
            r.prompt_tokens - r.cached_tokens
            for r in self.inflight.values()
            if r.first_token_at is None
        )

    def decoding(self) -> tuple[int, float]:
        """Requests past their first token, and their mean context."""
        if not self.decoding_count:
            return 0, 0.0
        return self.decoding_count, self.decoding_context / self.decoding_count

    def advance(self, request: InFlight, tokens: int, now: float) -> None:
        """A streamed chunk of ``tokens`` for ``request`` arrived at ``now``."""
        if request.first_token_at is None:
            request.first_token_at = request.window_at = now
            self.decoding_count += 1
            self.decoding_context += request.context
            self.prefill.observe(request.pending_at_dispatch, now - request.dispatched_at)
        request.tokens += tokens
        self.decoding_context += tokens
        request.last_token_at = now
        # Mean gaps over windows of tokens: a socket read may bring several tokens at once.
        span = request.tokens - request.window_tokens - 1
        if span >= ITL_WINDOW:
            batch, mean_context = self.decoding()
            self.itl.observe(batch, mean_context, (now - request.window_at) / span)
            request.window_at, request.window_tokens = now, request.tokens - 1

    def remove(self, ticket: int) -> None:
        request = self.inflight.pop(ticket, None)
        if request is not None and request.first_token_at is not None:
            self.decoding_count -= 1
            self.decoding_context -= request.context

    @property
    def models(self) -> frozenset[str]:
        """What it serves. Before discovery answers: the configured list. After: what it lists,
        narrowed to the configured models (and their adapters) when there are any."""
        configured = frozenset(self.config.models)
        if self.discovered is None:
            return configured
        if not configured:
            return self.discovered
        parents = {card.get("id"): card.get("parent") for card in self.model_cards}
        return frozenset(
            m for m in self.discovered if m in configured or parents.get(m) in configured
        )

    def serves(self, model: str) -> bool:
        return model in self.models

    def add_card(self, card: Mapping[str, Any]) -> None:
        """A model (a LoRA adapter) it was made to serve since its last listing."""
        name = str(card["id"])
        self.model_cards = (*(c for c in self.model_cards if c.get("id") != name), card)
        self.discovered = (self.discovered or frozenset()) | {name}

    def drop_card(self, name: str) -> None:
        self.model_cards = tuple(c for c in self.model_cards if c.get("id") != name)
        if self.discovered is not None:
            self.discovered = self.discovered - {name}

    def context_limit(self, model: str) -> int | None:
        lengths = [
            card["max_model_len"]
            for card in self.model_cards
            if model in (card.get("id"), card.get("parent"))
            and isinstance(card.get("max_model_len"), int)
        ]
        limits = [*lengths, *([self.kv_capacity] if self.kv_capacity is not None else [])]
        return min(limits) if limits else None


def make_adapter(session: aiohttp.ClientSession, config: BackendConfig) -> EngineAdapter:
    if config.engine == "vllm":
        return VllmAdapter(session, config.base_url, config.api_key)
    raise ValueError(f"backend {config.name!r}: unknown engine {config.engine!r}")


@dataclass(frozen=True, slots=True)
class Seat:
    """A request's place on a backend, from dispatch until it ends."""

    backend: Backend
    request: InFlight


class Fleet:
    """The set of backends, probed in the background."""

    def __init__(
        self,
        backends: list[Backend],
        *,
        unhealthy_after: int,
        probe_timeout_s: float,
        outliers: OutlierRules | None = None,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backends = {b.name: b for b in backends}
        self._unhealthy_after = unhealthy_after
        self._probe_timeout_s = probe_timeout_s
        self._outliers = outliers or OutlierRules()
        self.on_change = on_change
        self._clock = clock
        self._returns: set[asyncio.Task[None]] = set()
        self.adapters = AdapterBook(clock)  # LoRA adapters: where each is, loads

    def __iter__(self) -> Iterator[Backend]:
        return iter(self._backends.values())

    def __getitem__(self, name: str) -> Backend:
        return self._backends[name]

    def known_models(self) -> frozenset[str]:
        """What the backends serve, and the configured adapters of those models."""
        models: set[str] = set()
        for backend in self._backends.values():
            models |= backend.models
        models.update(a for a, entry in self.adapters.config.items() if entry.base in models)
        return frozenset(models)

    def healthy_for(self, model: str) -> list[Backend]:
        return [b for b in self._backends.values() if b.routable and b.serves(model)]

    def service_time(self, model: str, prompt_tokens: int, output_tokens: int) -> float | None:
        """How long a request of this size would take, from dispatch to its last token, on
        the backend that would serve it soonest as loaded now (the online latency models:
        prefill after the prompts pending there, then each token at the ITL of its batch
        with one more); None when no backend can take it now."""
        times = []
        for b in self.healthy_for(model):
            prefill = b.prefill.params.predict(b.pending_prefill() + prompt_tokens)
            batch, mean = b.decoding()
            context = prompt_tokens + output_tokens / 2
            mean = (mean * batch + context) / (batch + 1)
            times.append(prefill + output_tokens * b.itl.params.predict(batch + 1, mean))
        return min(times, default=None)

    def expected_for(self, model: str) -> list[Backend]:
        """Backends meant to serve the model and taking traffic, ready or not yet."""
        return [
            b
            for b in self._backends.values()
            if b.serves(model) and not b.draining and b.config.state == "active"
        ]

    def context_limit(self, model: str) -> int | None:
        """The most tokens (prompt plus reply) one request can hold on any backend meant to
        serve ``model``: its ``max_model_len``, or its whole KV cache where that is smaller.
        None while no such backend has said."""
        limits = [
            limit for b in self.expected_for(model) if (limit := b.context_limit(model)) is not None
        ]
        return max(limits) if limits else None

    def reconcile(
        self, configs: Iterable[BackendConfig], build: Callable[[BackendConfig], Backend]
    ) -> list[Backend]:
        """Make the fleet match a new config; return the backends that joined (to probe).

        A backend whose address or engine changed is replaced by a new one; one that left the
        config stops taking requests. Requests in flight finish on the object they were
        dispatched to (their lease holds it), whatever becomes of the name."""
        wanted = {c.name: c for c in configs}
        added: list[Backend] = []
        for name, config in wanted.items():
            current = self._backends.get(name)
            if current is not None and (current.config.base_url, current.config.engine) == (
                config.base_url,
                config.engine,
            ):
                current.config = config
                current.draining = False
                continue
            backend = build(config)
            self._backends[name] = backend
            added.append(backend)
        for name, backend in self._backends.items():
            if name not in wanted:
                backend.draining = True
        self.prune()
        self.on_change()
        return added

    # -- what the scheduler needs (gateway.scheduling.scheduler.Seats) -------------------

    def views(
        self,
        peer_load: Callable[[str], LoadTotals],
        rolling: Callable[[str], RollingView | None],
        wanted: frozenset[str] = frozenset(),
    ) -> list[BackendView]:
        """Every backend as the policy sees it, with what is in flight there, and how soon
        each ``wanted`` adapter it lacks could serve there (``gateway.lora``)."""
        book, now = self.adapters, self._clock()
        adapters = [m for m in wanted if book.is_adapter(m)]
        return [
            BackendView(
                b.name,
                b.routable,
                b.models,
                b.in_flight,
                b.config.max_in_flight,
                b.config.weight,
                tuple(
                    InFlightView(
                        r.tpot_s,
                        r.prompt_tokens,
                        r.tokens,
                        r.predicted_tokens,
                        r.reserved_kv,
                        r.first_token_at is not None,
                        r.first_token_at,
                        r.cached_tokens,
                    )
                    for r in b.inflight.values()
                ),
                b.prefill.params,
                b.itl.params,
                b.kv_capacity,
                b.dispatched,
                peer_load(b.name),
                rolling(b.name),
                b.config.pool_name,
                book.loadable(b, adapters, b.models, now) if adapters else {},
                book.evicts(b) if adapters else None,
                b.prefill.error,
                b.itl.error,
            )
            for b in self
        ]

    def serves(self, model: str, excluded: frozenset[str]) -> bool:
        """Some backend not excluded is meant to serve ``model`` (ready or not yet), or its
        base model when it is a configured adapter."""
        entry = self.adapters.config.get(model)
        models = (model,) if entry is None else (model, entry.base)
        return any(b.name not in excluded for m in models for b in self.expected_for(m))

    def capacities(self) -> list[tuple[str, int | None]]:
        return [(b.name, b.kv_capacity) for b in self]

    def seat(self, name: str, ticket: int, demand: Demand, cached: int, now: float) -> Seat:
        """Record a dispatch on backend ``name``: the request is in flight there now."""
        backend = self._backends[name]
        backend.dispatched += 1
        request = InFlight(
            ticket=ticket,
            tpot_s=demand.tpot_s,
            prompt_tokens=demand.prompt_tokens,
            predicted_tokens=demand.predicted_tokens,
            reserved_kv=demand.reserve_tokens,
            dispatched_at=now,
            pending_at_dispatch=backend.pending_prefill() + demand.prompt_tokens - cached,
            tenant=demand.tenant,
            cached_tokens=cached,
            model=demand.model,
        )
        backend.inflight[ticket] = request
        self.adapters.seated(backend, demand.model, now)
        return Seat(backend, request)

    def unseat(self, seat: Seat) -> InFlight | None:
        """The request ended: its place is free (a draining backend with nothing left
        leaves). Returns what it was, if it was still there."""
        backend = seat.backend
        request = backend.inflight.get(seat.request.ticket)
        backend.remove(seat.request.ticket)
        if request is not None:
            self.adapters.unseated(backend, request.model)
        if backend.draining:
            self.prune()
        return request

    def tenants_in_flight(self) -> list[str | None]:
        return [r.tenant for b in self for r in b.inflight.values()]

    def prune(self) -> None:
        """Forget drained backends that have nothing left in flight."""
        for name, backend in list(self._backends.items()):
            if backend.draining and not backend.inflight:
                del self._backends[name]
        self.adapters.forget(self._backends)

    def mark_unreachable(self, name: str, reason: str) -> None:
        """A request found the backend down: stop routing there until a probe says otherwise."""
        backend = self._backends[name]
        backend.last_error = reason
        if backend.healthy:
            log.warning("backend %s unreachable, marked unhealthy: %s", name, reason)
            backend.healthy = False
            self.on_change()

    def response_ok(self, backend: Backend) -> None:
        """A response from ``backend`` completed."""
        backend.outlier.succeeded(self._clock(), self._outliers)

    def response_failed(self, backend: Backend, reason: str) -> None:
        """A response from ``backend`` failed after the backend took the request: count it,
        and eject the backend once they run in a row (gateway.outliers)."""
        ejected = sum(b.outlier.ejected for b in self._backends.values())
        allowed = may_eject(ejected, len(self._backends), self._outliers)
        now = self._clock()
        if not backend.outlier.failed(reason, now, self._outliers, allowed):
            return
        state = backend.outlier
        assert state.ejected_until is not None
        log.warning(
            "backend %s ejected for %.0f s: %s",
            backend.name,
            state.ejected_until - now,
            state.reason,
        )
        self.on_change()
        loop = asyncio.get_running_loop()
        loop.call_later(state.ejected_until - now, self._probe_back, backend)

    def _probe_back(self, backend: Backend) -> None:
        task = asyncio.get_running_loop().create_task(self.probe(backend))
        self._returns.add(task)
        task.add_done_callback(self._returns.discard)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(b) for b in self._backends.values()))

    async def probe(self, backend: Backend) -> None:
        result = await backend.adapter.probe(self._probe_timeout_s)
        backend.last_probe = self._clock()
        was_healthy = backend.healthy
        old_models = backend.models
        if result.healthy and backend.outlier.may_return(backend.last_probe):
            backend.outlier.returned(backend.last_probe)
            log.info("backend %s passed its probe after its ejection: back in", backend.name)
            self.on_change()
        if result.healthy:
            backend.consecutive_failures = 0
            backend.healthy = True
            backend.discovered = result.model_ids
            backend.model_cards = result.models
            backend.load = result.load
            backend.last_error = None
        else:
            backend.consecutive_failures += 1
            backend.last_error = result.error
            if backend.consecutive_failures >= self._unhealthy_after or not was_healthy:
                backend.healthy = False
        if backend.healthy != was_healthy:
            log.info("backend %s is now %s", backend.name, "healthy" if backend.healthy else "down")
        if backend.healthy != was_healthy or backend.models != old_models:
            self.on_change()

    async def run_probes(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.probe_all()


async def background(name: str, factory: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop, logging (not losing) a crash."""
    try:
        await factory()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background task %s crashed", name)
