"""A continuous-batching engine modelled on vLLM's scheduler.

Each step runs one decode token for every running request that has finished its prefill, plus
chunked prefill of the others within the token budget; the step lasts as long as the profile
says for that mix, so a long prefill slows every decode in its step.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field

from bench.sim.profiles import Profile

FINISHED = -1


@dataclass(eq=False, slots=True)
class SimRequest:
    id: int
    prompt_tokens: int
    output_tokens: int
    priority: int = 0
    arrival: float = field(default_factory=time.monotonic)
    prefilled: int = 0
    generated: int = 0
    first_token_at: float | None = None
    finished_at: float | None = None
    aborted: bool = False
    tokens: asyncio.Queue[int] = field(default_factory=asyncio.Queue)

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.generated


@dataclass(slots=True)
class EngineCounters:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: int = 0
    aborted: int = 0
    rejected: int = 0
    preemptions: int = 0
    steps: int = 0


class QueueFull(Exception):
    """The waiting queue is at its bound."""


class Engine:
    def __init__(
        self,
        profile: Profile,
        *,
        seed: int = 0,
        priority_scheduling: bool = False,
        max_queued: int | None = None,
    ) -> None:
        self.profile = profile
        self.priority_scheduling = priority_scheduling
        self.max_queued = max_queued
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.counters = EngineCounters()
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def submit(self, prompt_tokens: int, output_tokens: int, priority: int = 0) -> SimRequest:
        if self.max_queued is not None and len(self.waiting) >= self.max_queued:
            self.counters.rejected += 1
            raise QueueFull
        request = SimRequest(next(self._ids), prompt_tokens, max(1, output_tokens), priority)
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
        elif request in self.waiting:
            self.waiting.remove(request)

    def kv_blocks_used(self) -> int:
        size = self.profile.block_size
        return sum(math.ceil(max(r.prefilled, r.context) / size) for r in self.running)

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.kv_blocks_used() / self.profile.kv_blocks)

    def _admit(self) -> None:
        if self.priority_scheduling and len(self.waiting) > 1:
            self.waiting = deque(sorted(self.waiting, key=lambda r: (r.priority, r.arrival)))
        free = self.profile.kv_blocks - self.kv_blocks_used()
        while self.waiting and len(self.running) < self.profile.max_num_seqs:
            need = math.ceil((self.waiting[0].prompt_tokens + 1) / self.profile.block_size)
            if need > free:
                break
            free -= need
            self.running.append(self.waiting.popleft())

    def _plan_step(self) -> tuple[list[SimRequest], list[tuple[SimRequest, int]]]:
        budget = self.profile.max_num_batched_tokens
        decodes = [r for r in self.running if r.prefilled >= r.prompt_tokens]
        budget -= len(decodes)
        prefills: list[tuple[SimRequest, int]] = []
        for request in self.running:
            if budget <= 0:
                break
            remaining = request.prompt_tokens - request.prefilled
            if remaining > 0:
                chunk = min(remaining, budget)
                prefills.append((request, chunk))
                budget -= chunk
        return decodes, prefills

    def _noise(self) -> float:
        cv = self.profile.noise_cv
        if cv <= 0:
            return 1.0
        sigma = math.sqrt(math.log1p(cv * cv))
        return self._rng.lognormvariate(-sigma * sigma / 2, sigma)

    async def _loop(self) -> None:
        while True:
            self._admit()
            if not self.running:
                self._wake.clear()
                await self._wake.wait()
                continue
            decodes, prefills = self._plan_step()
            prefill_tokens = sum(chunk for _, chunk in prefills)
            duration = self.profile.step_seconds(prefill_tokens, len(decodes)) * self._noise()
            await asyncio.sleep(duration)
            self.counters.steps += 1
            self._finish_step(decodes, prefills)

    def _finish_step(
        self, decodes: list[SimRequest], prefills: list[tuple[SimRequest, int]]
    ) -> None:
        now = time.monotonic()
        emitting: list[SimRequest] = []
        for request, chunk in prefills:
            if request.aborted:
                continue
            request.prefilled += chunk
            self.counters.prompt_tokens += chunk
            if request.prefilled >= request.prompt_tokens:
                request.first_token_at = now
                emitting.append(request)
        emitting.extend(r for r in decodes if not r.aborted)
        for request in emitting:
            request.generated += 1
            self.counters.generation_tokens += 1
            request.tokens.put_nowait(request.generated)
            if request.generated >= request.output_tokens:
                request.finished_at = now
                request.tokens.put_nowait(FINISHED)
                self.counters.finished += 1
                self.running.remove(request)
