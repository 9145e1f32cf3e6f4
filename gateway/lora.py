"""LoRA adapters on the backends: which are resident where, which are being loaded, and
loading one where a request was placed.

What is resident comes from each backend's ``/v1/models`` (adapters are listed with their
``parent``), from the gateway's own loads and unloads, and the slots from ``max_loras`` (the
config, else vLLM's ``vllm:lora_requests_info``). For placement the book tells, per backend,
how long until an adapter it lacks could serve there (``loadable``): the load's time (the
mean of measured loads, the configured ``load_ms`` before any), or what is left of a load in
progress. An adapter is loaded on one backend at a time
across the fleet (a second copy only once the first is resident, when that backend cannot
take more), and only in its pool when it is pinned to one, where a slot is free or can be
freed: the victim is the least recently used idle adapter of those the config names (never
one it does not know, nor one pinned to the backend's pool); it takes no new requests there
from the moment a load is placed after it. With every slot busy, a request for an adapter
held nowhere waits, within its TTFT budget, for one to go idle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adapters.base import BackendTimeout, BackendUnreachable
from gateway.config import AdapterConfig

if TYPE_CHECKING:
    from gateway.fleet import Backend

log = logging.getLogger(__name__)
MEASURED_WEIGHT = 0.3  # weight of each measured load in the moving mean of load times


@dataclass(slots=True)
class AdapterSlots:
    """One backend's adapters as the gateway knows them."""

    last_used: dict[str, float] = field(default_factory=dict)  # adapter -> last dispatch
    loading: dict[str, float] = field(default_factory=dict)  # adapter -> predicted end
    evicting: dict[str, str] = field(default_factory=dict)  # adapter loading -> its victim
    in_use: Counter[str] = field(default_factory=Counter)  # adapter -> requests in flight
    idle: dict[str, asyncio.Event] = field(default_factory=dict)  # set when in_use reaches 0


class AdapterBook:
    """Every backend's adapters, the adapters the config names, and measured load times."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.config: Mapping[str, AdapterConfig] = {}
        self.aware = True  # SchedulerConfig.adapter_aware
        self._slots: dict[str, AdapterSlots] = {}
        self._load_s: dict[str, float] = {}  # adapter -> moving mean of measured loads
        self._loads: dict[tuple[str, str], asyncio.Future[bool]] = {}
        self._clock = clock

    def slots(self, backend: Backend) -> AdapterSlots:
        return self._slots.setdefault(backend.name, AdapterSlots())

    def forget(self, names: Iterable[str]) -> None:
        """Drop the state of backends no longer in the fleet."""
        keep = set(names)
        for name in [n for n in self._slots if n not in keep]:
            del self._slots[name]

    def is_adapter(self, model: str) -> bool:
        return model in self.config

    @staticmethod
    def capacity(backend: Backend) -> int:
        """Its adapter slots: configured, else from its metrics, else none."""
        if backend.config.max_loras is not None:
            return backend.config.max_loras
        load = backend.load
        return load.max_loras if load is not None and load.max_loras is not None else 0

    def resident(self, backend: Backend) -> list[str]:
        """The adapters it lists (any with a parent, configured or not)."""
        return sorted(str(c["id"]) for c in backend.model_cards if c.get("parent") is not None)

    def load_s(self, adapter: str) -> float:
        measured = self._load_s.get(adapter)
        if measured is not None:
            return measured
        entry = self.config.get(adapter)
        return entry.load_ms / 1000 if entry is not None else 1.0

    def victim(self, backend: Backend) -> str | None:
        """The adapter to unload for a new one: the least recently used idle one of those the
        config names (it can load them again), never one pinned to this backend's pool."""
        slots = self.slots(backend)
        pool = backend.config.pool_name
        idle = [
            name
            for name in self.resident(backend)
            if name in self.config
            and not slots.in_use[name]
            and name not in slots.loading
            and self.config[name].pool != pool
        ]
        return min(idle, key=lambda n: (slots.last_used.get(n, -1.0), n), default=None)

    def free_slot(self, backend: Backend) -> bool:
        used = len(self.resident(backend)) + len(self.slots(backend).loading)
        return used < self.capacity(backend)

    def has_room(self, backend: Backend) -> bool:
        """A slot is free, or can be freed now, for one more adapter."""
        if self.capacity(backend) <= 0:
            return False
        return self.free_slot(backend) or self.victim(backend) is not None

    def evicts(self, backend: Backend) -> str | None:
        """The adapter a load there would evict now, if its slots are full."""
        return None if self.free_slot(backend) else self.victim(backend)

    def loading_anywhere(self, adapter: str) -> bool:
        return any(adapter in slots.loading for slots in self._slots.values())

    def loadable(
        self, backend: Backend, wanted: Iterable[str], base_models: frozenset[str], now: float
    ) -> dict[str, float]:
        """Adapter -> seconds until it could serve on ``backend``, for each wanted adapter
        of a model it serves that it does not hold and could load (or is loading)."""
        found: dict[str, float] = {}
        slots = self.slots(backend)
        for adapter in wanted:
            entry = self.config.get(adapter)
            if entry is None or entry.base not in base_models or adapter in backend.models:
                continue
            if not self.aware:
                found[adapter] = 0.0  # blind: loaded on arrival, its time not counted
            elif adapter in slots.loading:
                found[adapter] = max(0.0, slots.loading[adapter] - now)
            elif entry.pool is not None and entry.pool != backend.config.pool_name:
                continue
            elif adapter in slots.evicting.values() or self.loading_anywhere(adapter):
                continue  # being evicted here, or loading elsewhere: one load at a time
            elif self.has_room(backend):
                found[adapter] = self.load_s(adapter)
        return found

    # -- the life of a request and of a load ------------------------------------------------

    def seated(self, backend: Backend, model: str, now: float) -> None:
        """A request for ``model`` was placed there: an adapter it lacks starts loading, and
        the victim, if the slots are full, stops taking requests there at once."""
        if model in self.config or model in self.resident(backend):
            slots = self.slots(backend)
            slots.in_use[model] += 1
            slots.last_used[model] = now
            if model not in backend.models and model not in slots.loading:
                victim = self.evicts(backend) if self.aware else None
                slots.loading[model] = now + self.load_s(model)
                if victim is not None:
                    slots.evicting[model] = victim
                    self.unloaded(backend, victim)

    def unseated(self, backend: Backend, model: str) -> None:
        """A request for ``model`` there ended. If none is left and the load it was placed
        for never started (its lease was given back unused), that load is off."""
        slots = self._slots.get(backend.name)
        if slots is not None and slots.in_use[model] > 0:
            slots.in_use[model] -= 1
            if not slots.in_use[model]:
                del slots.in_use[model]
                event = slots.idle.pop(model, None)
                if event is not None:
                    event.set()
                if model in slots.loading and (backend.name, model) not in self._loads:
                    self.failed(backend, model)

    def loaded(self, backend: Backend, adapter: str, took_s: float) -> None:
        """A load finished: it is resident there, and its time counts for the next."""
        slots = self.slots(backend)
        slots.loading.pop(adapter, None)
        slots.evicting.pop(adapter, None)
        old = self._load_s.get(adapter)
        self._load_s[adapter] = took_s if old is None else old + MEASURED_WEIGHT * (took_s - old)
        entry = self.config.get(adapter)
        parent = entry.base if entry is not None else None
        backend.add_card({"id": adapter, "object": "model", "parent": parent, "root": adapter})

    def failed(self, backend: Backend, adapter: str) -> None:
        slots = self.slots(backend)
        slots.loading.pop(adapter, None)
        slots.evicting.pop(adapter, None)

    def unloaded(self, backend: Backend, adapter: str) -> None:
        self.slots(backend).last_used.pop(adapter, None)
        backend.drop_card(adapter)

    def state(self, backend: Backend) -> dict[str, Any]:
        """What /admin/backends shows of its adapters."""
        slots = self.slots(backend)
        return {
            "slots": self.capacity(backend),
            "resident": self.resident(backend),
            "loading": sorted(slots.loading),
            "in_use": dict(sorted(slots.in_use.items())),
        }

    async def ensure(self, backend: Backend, adapter: str, timeout_s: float) -> bool:
        """Make ``adapter`` resident on ``backend`` (one load per backend and adapter at a
        time; others wait on it): unload the victim first when the slots are full. False
        when it could not be loaded within ``timeout_s``."""
        if adapter in backend.models:
            return True
        key = (backend.name, adapter)
        running = self._loads.get(key)
        if running is None:
            running = asyncio.ensure_future(self._load(backend, adapter, timeout_s))
            self._loads[key] = running
            running.add_done_callback(lambda _f: self._loads.pop(key, None))
        return await asyncio.shield(running)

    async def _load(self, backend: Backend, adapter: str, timeout_s: float) -> bool:
        entry = self.config.get(adapter)
        if entry is None:
            return False
        started = self._clock()
        try:
            async with asyncio.timeout(timeout_s):
                slots = self.slots(backend)
                victim = slots.evicting.get(adapter)
                if victim is None and not self.aware and not self.free_slot(backend):
                    victim = self.victim(backend)  # blind: whatever is idle now
                if victim is not None:
                    if slots.in_use[victim]:  # its requests there end first
                        await slots.idle.setdefault(victim, asyncio.Event()).wait()
                    await backend.adapter.unload_adapter(victim, timeout_s)
                    self.unloaded(backend, victim)
                await backend.adapter.load_adapter(adapter, entry.path, timeout_s)
        except (TimeoutError, ValueError, BackendUnreachable, BackendTimeout) as exc:
            log.warning("adapter %s could not be loaded on %s: %s", adapter, backend.name, exc)
            self.failed(backend, adapter)
            return False
        self.loaded(backend, adapter, self._clock() - started)
        log.info("adapter %s loaded on %s", adapter, backend.name)
        return True
