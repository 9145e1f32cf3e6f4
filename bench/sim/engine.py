"""A continuous-batching engine modelled on vLLM's scheduler.

Each step runs one decode token for every running request whose prefill is done, plus chunked
prefill of the others within the token budget, and lasts as long as the profile says for that
mix: a long prefill slows every decode in its step. KV blocks are reserved for a request's whole
prefill when it is admitted; decodes grow into new blocks, and when none are left the engine
preempts the most recently admitted request (vLLM's recompute mode: its blocks are freed and
its prompt plus what it generated so far is prefilled again later).

The engine runs in real time on an event loop (``run``), or in virtual time driven by a caller
(``plan``/``complete``, see ``bench.sim.virtual``).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.sim.prefix_cache import ROOT, PrefixCache, next_block, reply_id
from bench.sim.profiles import Profile

FINISHED = -1


@dataclass(eq=False, slots=True)
class SimRequest:
    id: int
    prompt_tokens: int
    output_tokens: int
    priority: int = 0
    arrival: float = 0.0
    prefill_target: int = 0
    computed: int = 0
    generated: int = 0
    preemptions: int = 0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    aborted: bool = False
    finish_reason: str = "length"
    token_times: list[float] = field(default_factory=list)
    tokens: asyncio.Queue[int] | None = None
    # Its full blocks, chained (prefix_cache): the prompt's, then those its reply fills.
    block_hashes: list[int] = field(default_factory=list)
    tail: list[int] = field(default_factory=list)  # token ids after its last full block
    held: tuple[int, ...] = ()  # its leading blocks in the cache, shared or computed by it
    cached_tokens: int = 0  # prompt tokens its first admission found cached
    known_hit: int = 0  # prompt tokens taken as cached whatever the cache holds (for bounds)

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.generated

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prefill_target


@dataclass(slots=True)
class EngineCounters:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: int = 0
    aborted: int = 0
    rejected: int = 0
    preemptions: int = 0
    steps: int = 0
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0  # of those, found cached


@dataclass(frozen=True, slots=True)
class Step:
    decodes: list[SimRequest]
    prefills: list[tuple[SimRequest, int]]
    duration: float


class QueueFull(Exception):
    """The waiting queue is at its bound."""


TokenHook = Callable[[SimRequest, float], None]


class Engine:
    def __init__(
        self,
        profile: Profile,
        *,
        seed: int = 0,
        priority_scheduling: bool = False,
        max_queued: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_token: TokenHook | None = None,
        on_finish: TokenHook | None = None,
        prefix_caching: bool = True,
    ) -> None:
        self.profile = profile
        self.cache = PrefixCache() if prefix_caching else None
        self.priority_scheduling = priority_scheduling
        self.max_queued = max_queued
        self.clock = clock
        self.on_token = on_token
        self.on_finish = on_finish
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.counters = EngineCounters()
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()

    # -- requests -------------------------------------------------------------------------

    def submit(
        self,
        prompt_tokens: int,
        output_tokens: int,
        priority: int = 0,
        *,
        stream: bool = True,
        now: float | None = None,
        block_hashes: tuple[int, ...] = (),
        tail: tuple[int, ...] = (),
        known_hit: int = 0,
    ) -> SimRequest:
        """``block_hashes``: the prompt's full blocks; ``tail``: the ids of its tokens after
        them (only those make the reply's blocks hash as a next turn's prompt will).
        ``known_hit``: that many of its prompt tokens count as found in the cache on its first
        admission, whatever it holds (their KV is its own; an upper bound's oracle)."""
        if self.max_queued is not None and len(self.waiting) >= self.max_queued:
            self.counters.rejected += 1
            raise QueueFull
        prompt = max(1, prompt_tokens)
        request = SimRequest(
            next(self._ids),
            prompt,
            max(1, output_tokens),
            priority,
            arrival=self.clock() if now is None else now,
            prefill_target=prompt,
            tokens=asyncio.Queue() if stream else None,
            block_hashes=list(block_hashes),
            tail=list(tail),
            known_hit=min(max(0, known_hit), prompt - 1),
        )
        self.waiting.append(request)
        self._wake.set()
        return request

    def abort(self, request: SimRequest) -> None:
        if request.finished_at is not None or request.aborted:
            return
        request.aborted = True
        self.counters.aborted += 1
        if request in self.running:
            self.running.remove(request)
            self._uncache(request)
        elif request in self.waiting:
            self.waiting.remove(request)

    # -- KV accounting --------------------------------------------------------------------

    def _blocks(self, tokens: int) -> int:
        return math.ceil(tokens / self.profile.block_size)

    def _reserved(self, request: SimRequest) -> int:
        """Blocks of its own (those it shares from the prefix cache are counted there)."""
        return self._blocks(max(request.computed, request.prefill_target)) - len(request.held)

    def _free_blocks(self) -> int:
        shared = self.cache.in_use if self.cache is not None else 0
        return self.profile.kv_blocks - sum(self._reserved(r) for r in self.running) - shared

    def kv_blocks_used(self) -> int:
        shared = self.cache.in_use if self.cache is not None else 0
        return sum(self._blocks(r.computed) - len(r.held) for r in self.running) + shared

    def _cached_prefix(self, request: SimRequest) -> None:
        """On admission: the longest run of its prompt's blocks already cached is shared, not
        computed (at least one token is always computed, as vLLM recomputes the last)."""
        if request.known_hit and not request.computed and not request.preemptions:
            request.computed = request.cached_tokens = request.known_hit
            return
        cache = self.cache
        if cache is None or request.computed or not request.block_hashes:
            return
        usable = min(
            len(request.block_hashes), (request.prefill_target - 1) // self.profile.block_size
        )
        hit = cache.match(request.block_hashes[:usable])
        if hit:
            request.held = tuple(request.block_hashes[:hit])
            cache.acquire(request.held)
            request.computed = hit * self.profile.block_size
        if request.preemptions == 0:
            request.cached_tokens = hit * self.profile.block_size

    def _uncache(self, request: SimRequest) -> None:
        """It left the running set: its blocks go back to the cache, free, to be reused."""
        cache = self.cache
        if cache is None:
            return
        done = min(request.computed // self.profile.block_size, len(request.block_hashes))
        cache.release(request.held, request.block_hashes[len(request.held) : done])
        request.held = ()
        self._fit_cache()

    def _register(self, request: SimRequest) -> None:
        """Its newly computed full blocks go into the cache at once (vLLM caches a block as
        soon as it is full), still held by it: a request arriving meanwhile can share them."""
        cache = self.cache
        if cache is None or not request.block_hashes:
            return
        done = min(request.computed // self.profile.block_size, len(request.block_hashes))
        start = len(request.held)
        if done > start:
            fresh = request.block_hashes[start:done]
            adopted = cache.adopt(fresh)
            request.held = request.held + tuple(fresh[:adopted])

    def _grow(self, request: SimRequest) -> None:
        """Its reply's latest token joins its token ids; a full block gets its hash."""
        if not request.block_hashes and not request.tail:
            return  # not cached at all
        request.tail.append(reply_id(request.generated - 1))
        if len(request.tail) == self.profile.block_size:
            previous = request.block_hashes[-1] if request.block_hashes else ROOT
            request.block_hashes.append(next_block(previous, request.tail))
            request.tail.clear()

    def _fit_cache(self) -> None:
        """Evict free cached blocks that no longer fit beside those in use."""
        cache = self.cache
        if cache is not None:
            cache.evict(cache.free - max(0, self._free_blocks()))

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.kv_blocks_used() / self.profile.kv_blocks)

    # -- scheduling -----------------------------------------------------------------------

    def _admit(self, now: float) -> None:
        if self.priority_scheduling and len(self.waiting) > 1:
            self.waiting = deque(sorted(self.waiting, key=lambda r: (r.priority, r.arrival)))
        while self.waiting and len(self.running) < self.profile.max_num_seqs:
            head = self.waiting[0]
            self._cached_prefix(head)
            need = self._blocks(head.prefill_target + 1) - len(head.held)
            if need > self._free_blocks():
                self._uncache(head)
                head.computed = 0
                break
            request = self.waiting.popleft()
            if request.scheduled_at is None:
                request.scheduled_at = now
            if self.cache is not None and request.block_hashes:
                self.counters.prefix_queries += request.prompt_tokens
                self.counters.prefix_hits += len(request.held) * self.profile.block_size
            self.running.append(request)
            self._fit_cache()

    def _victim(self) -> SimRequest:
        if self.priority_scheduling:
            return max(self.running, key=lambda r: (r.priority, r.arrival))
        return self.running[-1]

    def _preempt(self, request: SimRequest) -> None:
        self.running.remove(request)
        self._uncache(request)
        request.computed = 0
        request.prefill_target = request.context
        request.preemptions += 1
        self.counters.preemptions += 1
        self.waiting.appendleft(request)

    def _make_room_for_decodes(self) -> None:
        while self.running:
            decodes = [r for r in self.running if not r.prefilling]
            growth = sum(self._blocks(r.computed + 1) - self._blocks(r.computed) for r in decodes)
            if growth <= self._free_blocks():
                return
            self._preempt(self._victim())

    def plan(self, now: float | None = None) -> Step | None:
        """Admit, preempt if KV is short, and return the next step (None when idle)."""
        self._admit(self.clock() if now is None else now)
        self._make_room_for_decodes()
        if not self.running:
            return None
        budget = self.profile.max_num_batched_tokens
        decodes = [r for r in self.running if not r.prefilling]
        budget -= len(decodes)
        prefills: list[tuple[SimRequest, int]] = []
        for request in self.running:
            if budget <= 0:
                break
            remaining = request.prefill_target - request.computed
            if remaining > 0:
                chunk = min(remaining, budget)
                prefills.append((request, chunk))
                budget -= chunk
        duration = self.profile.step_seconds(
            sum(chunk for _, chunk in prefills),
            len(decodes),
            sum(r.computed for r in decodes),
        )
        return Step(decodes, prefills, duration * self._noise())

    def complete(self, step: Step, now: float) -> None:
        """Apply a step that ended at ``now``: advance prefills, emit tokens, finish requests."""
        self.counters.steps += 1
        emitting: list[SimRequest] = []
        for request, chunk in step.prefills:
            if request.aborted or request not in self.running:
                continue
            request.computed += chunk
            self.counters.prompt_tokens += chunk
            self._register(request)
            if not request.prefilling:
                emitting.append(request)
        for request in step.decodes:
            if not request.aborted and request in self.running:
                request.computed += 1
                self._register(request)
                emitting.append(request)
        for request in emitting:
            self._emit(request, now)

    def _emit(self, request: SimRequest, now: float) -> None:
        request.generated += 1
        self._grow(request)
        self.counters.generation_tokens += 1
        if request.first_token_at is None:
            request.first_token_at = now
        if self.on_token is not None:
            self.on_token(request, now)
        request.last_token_at = now
        request.token_times.append(now)
        if request.tokens is not None:
            request.tokens.put_nowait(request.generated)
        if request.generated >= request.output_tokens:
            request.finished_at = now
            self.counters.finished += 1
            self.running.remove(request)
            self._uncache(request)
            if request.tokens is not None:
                request.tokens.put_nowait(FINISHED)
            if self.on_finish is not None:
                self.on_finish(request, now)

    def _noise(self) -> float:
        cv = self.profile.noise_cv
        if cv <= 0:
            return 1.0
        sigma = math.sqrt(math.log1p(cv * cv))
        return self._rng.lognormvariate(-sigma * sigma / 2, sigma)

    # -- real time ------------------------------------------------------------------------

    async def run(self) -> None:
        """Step in real time for as long as the task lives."""
        while True:
            step = self.plan()
            if step is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(step.duration)
            self.complete(step, self.clock())
