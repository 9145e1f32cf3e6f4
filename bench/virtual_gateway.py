"""The gateway's scheduling, driven in virtual time against the simulator's engine model.

Everything that decides is the gateway's own code: the Scheduler with its policy (pure
functions over snapshots), each Backend's online latency models fed by the token times the
relay would see, and the packaged length predictor. Only the network and the event loop are
left out, so thousands of requests at several times a GPU fleet's capacity run in seconds on
one core, deterministically. The same code serves requests over HTTP in ``sluice serve``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from adapters.base import EngineAdapter, EngineLoad
from bench.sim.engine import Engine, SimRequest, Step, TokenHook
from bench.sim.prefix_cache import reply_text, split_blocks, token_ids
from bench.sim.profiles import Profile
from bench.sim.server import prompt_texts
from bench.workload import SCORPIO_CLASSES, Planned, Result, chat_messages
from gateway.config import (
    AdapterConfig,
    BackendConfig,
    Degrade,
    GatewayConfig,
    LatencyPrior,
    SchedulerConfig,
    TenantConfig,
)
from gateway.estimate import demand, estimate
from gateway.fleet import Backend, Fleet, InFlight
from gateway.prefix_index import answer_hashes, chunk_hashes, prompt_text
from gateway.runtime import fair_share, make_policy, prefix_index
from gateway.scheduling.degrade import Pressure, PressureRules
from gateway.scheduling.scheduler import Scheduler
from gateway.scheduling.snapshot import Placement, Rejection, Route
from gateway.slo import SloTarget
from predictor.model import LengthModel

MODEL = "virtual-model"
GUARD_REASONS = ("ttft_unattainable", "ttft_late", "tpot_unattainable")


def _body(item: Planned) -> dict[str, object]:
    return {"model": MODEL, "max_tokens": item.max_tokens, "messages": chat_messages(item.sample)}


@dataclass(frozen=True, slots=True)
class VariantPool:
    """A second pool serving a variant of the model (a quantized one) on its own engines,
    named v0, v1, ...; requests reach it only by degrading (``gateway.scheduling.degrade``)."""

    model: str
    profile: Profile
    backends: int
    prior: LatencyPrior
    degrade: Degrade = "when_unattainable"  # every class's SloClass.degrade
    rules: PressureRules = field(default_factory=PressureRules)


@dataclass(frozen=True, slots=True)
class AdapterSetup:
    """LoRA adapters of the model on every engine: ``slots`` held at once per engine (vLLM's
    --max-loras), a load taking ``load_s``. ``mode``: ``aware`` is the gateway's placement
    (gateway.lora); ``blind`` places as if every engine held every adapter, and the engine
    loads on arrival what it lacks (evicting its least recently used idle adapter, or
    waiting for one to go idle); ``everywhere`` places blind too, and a miss loads the
    adapter on every engine."""

    names: tuple[str, ...]
    slots: int
    load_s: float
    mode: str = "aware"


class _Loads:
    """The engines' adapter loads in virtual time, kept in the gateway's adapter book (what
    the gateway would learn from its own loads and the engines' listings)."""

    def __init__(
        self, fleet: Fleet, setup: AdapterSetup, at: Callable[[float, Callable[[], None]], None]
    ) -> None:
        self._fleet, self._setup, self._at = fleet, setup, at
        self._pending: dict[tuple[str, str], list[Callable[[], None]]] = {}
        self._blocked: set[tuple[str, str]] = set()  # waiting for a slot to go idle
        self.loads = 0

    def run(self, backend: str, adapter: str, now: float, then: Callable[[], None]) -> None:
        """Run ``then`` once ``adapter`` is resident on ``backend``, loading it if need be."""
        if self._setup.mode == "everywhere" and adapter not in self._fleet[backend].models:
            for other in self._fleet:
                if other.name != backend:
                    self._want(other.name, adapter, now, None)
        self._want(backend, adapter, now, then)

    def _want(
        self, backend: str, adapter: str, now: float, then: Callable[[], None] | None
    ) -> None:
        key = (backend, adapter)
        if adapter in self._fleet[backend].models:
            if then is not None:
                then()
            return
        waiting = self._pending.get(key)
        if waiting is not None:
            if then is not None:
                waiting.append(then)
            return
        self._pending[key] = [then] if then is not None else []
        self._try(key, now)

    def _try(self, key: tuple[str, str], now: float) -> None:
        backend, adapter = key
        b, book = self._fleet[backend], self._fleet.adapters
        slots = book.slots(b)
        chosen = slots.evicting.get(adapter)  # the gateway's victim (aware placement)
        if chosen is not None:
            if slots.in_use[chosen]:  # its requests there end first
                self._blocked.add(key)
                return
        else:
            running = [
                k for k in self._pending if k[0] == backend and k != key and k not in self._blocked
            ]
            if len(book.resident(b)) + len(running) >= book.capacity(b):
                victim = book.victim(b)
                if victim is None:  # every slot busy: wait for an adapter to go idle
                    self._blocked.add(key)
                    return
                book.unloaded(b, victim)
        self._blocked.discard(key)
        self.loads += 1
        self._at(now + self._setup.load_s, lambda: self._done(key))

    def _done(self, key: tuple[str, str]) -> None:
        backend, adapter = key
        self._fleet.adapters.loaded(self._fleet[backend], adapter, self._setup.load_s)
        for then in self._pending.pop(key, []):
            then()

    def retry(self, now: float) -> None:
        """Adapters may have gone idle: start the loads that waited for a slot."""
        for key in sorted(self._blocked):
            self._try(key, now)


@dataclass(slots=True)
class _Live:
    ticket: int
    backend: str
    inflight: InFlight
    item: Planned
    arrival: float
    sim: SimRequest
    model: str
    first: float | None = None
    last: float | None = None
    tokens: int = 0


def run_virtual(
    items: list[Planned],
    *,
    profile: Profile,
    backends: int,
    scheduler: SchedulerConfig,
    max_in_flight: int,
    prior: LatencyPrior,
    lengths: LengthModel,
    slo_scale: float = 1.0,
    instances: dict[str, tuple[str, int]] | None = None,
    tenants: dict[str, TenantConfig] | None = None,
    prefix_caching: bool = False,
    report_cached: bool = True,
    counters: dict[str, int] | None = None,
    unprotected: frozenset[str] = frozenset(),
    variant: VariantPool | None = None,
    adapters: AdapterSetup | None = None,
) -> list[Result]:
    """Serve ``items`` on ``backends`` engines named b0, b1, ...; ``instances`` places them in
    macro instances (backend -> instance, place in its cycle) for rolling activation;
    ``tenants`` weighs the items' tenants for fair share. With ``prefix_caching`` the engines
    cache prefixes as vLLM does and the gateway's prefix index (when the scheduler config is
    prefix-aware) follows them, corrected from each reply's cached tokens when
    ``report_cached``; without it neither caches (the earlier benchmarks' engine).
    ``counters``, when given, gets the engines' prefix-cache counters summed; classes in
    ``unprotected`` may be overtaken once admitted (``SloClass.protected``); ``variant`` adds
    a pool of a cheaper variant that requests may be degraded to; ``adapters`` gives every
    engine LoRA adapter slots, and items naming an adapter ask for it."""
    now = [0.0]

    def clock() -> float:
        return now[0]

    pools = [(f"b{i}", MODEL, profile, prior) for i in range(backends)]
    if variant is not None:
        pools += [
            (f"v{i}", variant.model, variant.profile, variant.prior)
            for i in range(variant.backends)
        ]
    profiles = {name: engine for name, _, engine, _ in pools}
    if adapters is not None:
        scheduler = scheduler.model_copy(update={"adapter_aware": adapters.mode == "aware"})
    slots = {"max_loras": adapters.slots} if adapters is not None else {}
    fleet = Fleet(
        [
            Backend.create(
                BackendConfig.model_validate(
                    {
                        "name": name,
                        "url": "http://127.0.0.1:9",
                        "max_in_flight": max_in_flight,
                        "models": [model],
                        **slots,
                    }
                ),
                cast(EngineAdapter, None),  # never called: the engine below stands in
                backend_prior,
            )
            for name, model, _, backend_prior in pools
        ],
        unhealthy_after=2,
        probe_timeout_s=1.0,
        clock=clock,
    )
    for backend in fleet:
        backend.healthy = True
        backend.discovered = frozenset(backend.config.models)
        backend.load = EngineLoad(kv_capacity_tokens=profiles[backend.name].kv_tokens)
    timers: list[tuple[float, int, Callable[[], None]]] = []
    if adapters is not None:
        fleet.adapters.config = {
            name: AdapterConfig(base=MODEL, path=f"/lora/{name}", load_ms=adapters.load_s * 1000)
            for name in adapters.names
        }
        fleet.adapters.aware = adapters.mode == "aware"
    counter = itertools.count()
    loads = (
        _Loads(fleet, adapters, lambda at, then: heapq.heappush(timers, (at, next(counter), then)))
        if adapters is not None
        else None
    )
    queue = Scheduler(fleet, make_policy(scheduler), clock=clock)
    routes: tuple[Route, ...] = ()
    if variant is not None:
        queue.pressure = Pressure(variant.rules)
        routes = (Route(variant.model),)
    queue.instances = dict(instances or {})
    settings = GatewayConfig(scheduler=scheduler, tenants=tenants or {})
    queue.fair = fair_share(settings)
    queue.prefix = prefix_index(settings) if prefix_caching else None
    loop = asyncio.new_event_loop()  # only to create futures; it never runs
    live: dict[tuple[str, int], _Live] = {}
    finished: list[tuple[str, int]] = []
    results: list[Result] = []
    engines: dict[str, Engine] = {}
    steps: dict[str, tuple[float, Step]] = {}

    def on_token(name: str) -> TokenHook:
        def hook(request: SimRequest, at: float) -> None:
            state = live[(name, request.id)]
            fleet[name].advance(state.inflight, 1, at)
            state.first = state.first if state.first is not None else at
            state.last = at
            state.tokens += 1

        return hook

    def on_finish(name: str) -> TokenHook:
        def hook(request: SimRequest, at: float) -> None:
            finished.append((name, request.id))

        return hook

    for index, backend in enumerate(fleet):
        engine = Engine(
            profiles[backend.name], seed=index, clock=clock, prefix_caching=prefix_caching
        )
        engine.on_token = on_token(backend.name)
        engine.on_finish = on_finish(backend.name)
        engines[backend.name] = engine

    pending: dict[int, tuple[Planned, float, asyncio.Future[Placement | Rejection]]] = {}
    # Arrivals by time; a conversation's next turn joins once the one it follows is answered.
    after = {id(i.follows): i for i in items if i.follows is not None}
    arrivals = [(i.at, n, i) for n, i in enumerate(items) if i.follows is None]
    heapq.heapify(arrivals)
    sequence = itertools.count(len(items))

    def answered(item: Planned, arrival: float, result: Result) -> None:
        result.sent_at = arrival
        results.append(result)
        follower = after.get(id(item))
        if follower is not None:
            heapq.heappush(arrivals, (now[0] + follower.at, next(sequence), follower))

    def start_step(name: str) -> None:
        if name not in steps:
            step = engines[name].plan(now[0])
            if step is not None:
                steps[name] = (now[0] + step.duration, step)

    def settle() -> None:
        """Carry out what the last scheduling pass decided."""
        for ticket, (item, arrival, future) in list(pending.items()):
            if not future.done():
                continue
            del pending[ticket]
            placement = future.result()
            if isinstance(placement, Rejection):
                if placement.reason == "no_backend":
                    answered(item, arrival, Result(item.slo_class, 503, tenant=item.tenant))
                    continue
                reason = placement.reason if placement.reason in GUARD_REASONS else "error"
                answered(
                    item,
                    arrival,
                    Result(
                        item.slo_class,
                        429,
                        elapsed_s=now[0] - arrival,
                        reason=reason,
                        tenant=item.tenant,
                    ),
                )
                continue
            seat = queue.seat_of(ticket)
            assert seat is not None
            inflight = seat.request
            true_output = min(item.sample.output_tokens, item.max_tokens)
            blocks, tail = (
                split_blocks(
                    token_ids(prompt_texts(_body(item), True)[0], item.sample.prompt_tokens),
                    profile.block_size,
                )
                if prefix_caching
                else ((), ())
            )
            served = placement.model or MODEL

            def send(
                placement: Placement = placement,
                item: Planned = item,
                inflight: InFlight = inflight,
                arrival: float = arrival,
                ticket: int = ticket,
                true_output: int = true_output,
                blocks: tuple[int, ...] = blocks,
                tail: tuple[int, ...] = tail,
                served: str = served,
            ) -> None:
                sim = engines[placement.backend].submit(
                    item.sample.prompt_tokens,
                    true_output,
                    placement.priority or 0,
                    stream=False,
                    now=now[0],
                    block_hashes=blocks,
                    tail=tail,
                )
                live[(placement.backend, sim.id)] = _Live(
                    ticket, placement.backend, inflight, item, arrival, sim, served
                )
                start_step(placement.backend)

            if loads is not None and fleet.adapters.is_adapter(served):
                loads.run(placement.backend, served, now[0], send)
            else:
                send()

    def arrive(item: Planned) -> None:
        ttft_ms, tpot_ms = SCORPIO_CLASSES[item.slo_class]
        body = _body(item)
        slo = SloTarget(
            item.slo_class,
            ttft_ms * slo_scale,
            tpot_ms * slo_scale,
            protected=item.slo_class not in unprotected,
            degrade="never" if variant is None else variant.degrade,
        )
        expected = estimate(body, lengths, scheduler.output_quantile)
        prefix = chunk_hashes(prompt_text(body)) if queue.prefix is not None else ()
        model = item.adapter or MODEL
        wanted = demand(model, now[0], slo, expected, item.tenant, prefix, None, routes)
        ticket, future = queue.submit(wanted, loop)
        pending[ticket] = (item, now[0], future)

    tick = scheduler.tick_ms / 1000
    next_tick = tick
    while arrivals or pending or steps or timers:
        candidates = [t for t, _ in steps.values()]
        if timers:
            candidates.append(timers[0][0])
        if arrivals:
            candidates.append(arrivals[0][0])
        if pending:
            candidates.append(next_tick)
        if not candidates:
            break
        now[0] = min(candidates)
        if arrivals and arrivals[0][0] <= now[0]:
            arrive(heapq.heappop(arrivals)[2])
        while timers and timers[0][0] <= now[0]:
            heapq.heappop(timers)[2]()
        for name, (end, step) in sorted(steps.items()):
            if end <= now[0]:
                del steps[name]
                engines[name].complete(step, now[0])
                start_step(name)
        for key in finished:
            state = live.pop(key)
            if queue.prefix is not None:
                if report_cached:
                    queue.prefix.correct(
                        state.backend, state.inflight.cached_tokens, state.sim.cached_tokens
                    )
                # What the relay would see of the reply, as the proxy records it.
                reply = reply_text(state.tokens)
                queue.prefix.record(state.backend, answer_hashes(_body(state.item), reply))
            queue.finish(state.ticket)
            tpot = None
            if state.first is not None and state.last is not None and state.tokens > 1:
                tpot = (state.last - state.first) / (state.tokens - 1)
            ttft = None if state.first is None else state.first - state.arrival
            item = state.item
            elapsed = now[0] - state.arrival
            answered(
                item,
                state.arrival,
                Result(
                    item.slo_class,
                    200,
                    ttft,
                    tpot,
                    state.tokens,
                    elapsed,
                    tenant=item.tenant,
                    model=state.model,
                ),
            )
        if finished:
            finished.clear()
            if loads is not None:
                loads.retry(now[0])
            queue.schedule()
        if now[0] >= next_tick:
            queue.schedule()
            next_tick = now[0] + tick
        settle()
    for future in (f for _, _, f in pending.values()):
        future.cancel()
    loop.close()
    if counters is not None:
        counters["prefix_queries"] = sum(e.counters.prefix_queries for e in engines.values())
        counters["prefix_hits"] = sum(e.counters.prefix_hits for e in engines.values())
        counters["adapter_loads"] = loads.loads if loads is not None else 0
    assert not live, f"{len(live)} requests never finished"
    assert math.isfinite(now[0])
    return results
