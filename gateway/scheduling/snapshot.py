"""Immutable views that scheduling decisions are computed over, and what decisions return."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.scheduling.latency import ItlParams, PrefillParams
from gateway.state.load import LoadTotals

NO_PEERS = LoadTotals()


@dataclass(frozen=True, slots=True)
class InFlightView:
    """A request dispatched to a backend and not finished."""

    tpot_s: float
    prompt_tokens: int
    tokens: int  # generated so far
    predicted_tokens: int
    reserved_kv: int  # prompt + conservative output estimate
    started: bool  # first token seen
    first_token_at: float | None = None
    cached_tokens: int = 0  # of its prompt, expected in the backend's prefix cache

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens the backend must compute."""
        return self.prompt_tokens - self.cached_tokens

    def saved_s(self, now: float) -> float:
        """Decode slack built up so far: tokens * TPOT target - time since the first token
        (EcoServe's saved TPOT); infinite with no target or before the first token."""
        if self.first_token_at is None or not math.isfinite(self.tpot_s):
            return math.inf
        return self.tokens * self.tpot_s - (now - self.first_token_at)

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.tokens


@dataclass(frozen=True, slots=True)
class RollingView:
    """A backend's place in its macro instance's activation cycle."""

    instance: str
    position: int
    active_since: float | None = None  # when it became the instance's active backend
    sent_prompts: tuple[int, ...] = ()  # prompt tokens sent to it since then


@dataclass(frozen=True, slots=True)
class Activation:
    """An instance's active backend after a pass, and what was sent to it since it became
    active."""

    backend: str
    since: float
    sent_prompts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BackendView:
    name: str
    healthy: bool
    models: frozenset[str]
    in_flight: int
    max_in_flight: int
    weight: float = 1.0
    requests: tuple[InFlightView, ...] = ()
    prefill: PrefillParams | None = None
    itl: ItlParams | None = None
    kv_capacity: int | None = None
    dispatched: int = 0  # requests sent there so far: the last tie-break, least used first
    peers: LoadTotals = NO_PEERS  # other gateway replicas' requests in flight there
    rolling: RollingView | None = None  # its macro instance and activation, when it has one
    pool: str = "default"
    # LoRA adapter -> seconds until it could serve here, for waiting requests' adapters it
    # does not hold but could load (or is loading): gateway.lora
    loadable: Mapping[str, float] = field(default_factory=dict)
    evicts: str | None = None  # the adapter a load here would evict (its slots are full)
    # How many times longer than predicted prefill and each token may take here (the
    # latency models' shortfall quantile; 1 until learned): admission's arrival test
    prefill_error: float = 1.0
    itl_error: float = 1.0

    def offers(self, model: str) -> bool:
        """It serves ``model``, or could once it loads that adapter."""
        return model in self.models or model in self.loadable

    @property
    def total_in_flight(self) -> int:
        return self.in_flight + self.peers.count

    @property
    def has_room(self) -> bool:
        return self.total_in_flight < self.max_in_flight


@dataclass(frozen=True, slots=True)
class Demand:
    """What a request needs, as the scheduler weighs it."""

    model: str
    arrival: float
    deadline: float
    tpot_s: float = math.inf
    prompt_tokens: int = 0
    predicted_tokens: int = 0
    reserve_tokens: int = 0  # KV it may need: prompt + a conservative output estimate
    rejectable: bool = True
    tenant: str | None = None
    prefix: tuple[int, ...] = ()  # its prompt's chunk hashes (gateway.prefix_index)
    session: str | None = None  # the client's session id, when it gave one
    protected: bool = True  # admitted at arrival, it keeps its place (scheduling.admission)
    pool: str | None = None  # only this pool's backends (a variant's pool), when set
    degrade: str = "never"  # SloClass.degrade, as capped by its tenant
    variants: tuple[Route, ...] = ()  # where else it may be served, in order (scheduling.degrade)
    origin: str | None = None  # the model it asked for, while it is placed for a variant

    @property
    def asked(self) -> str:
        """The model the client asked for."""
        return self.origin if self.origin is not None else self.model


@dataclass(frozen=True, slots=True)
class Route:
    """A model and, optionally, the one pool to serve it from."""

    model: str
    pool: str | None = None


@dataclass(frozen=True, slots=True)
class WaitingView:
    """A request in the gateway queue: what it needs, and where it stands this pass."""

    ticket: int
    demand: Demand
    excluded: frozenset[str] = frozenset()
    credit: float = 0.0
    rank: int = 0  # its tenant's fair-share rank: 0 least served (scheduling.fairness)
    cached: Mapping[str, int] = field(default_factory=dict)  # backend -> prompt tokens cached
    affine: str | None = None  # the backend its session's last request went to
    leave_slots: int = 0  # slots of its model it must leave for tenants ranked below its own
    committed: bool = False  # admission committed to serving it in time (scheduling.admission)

    @property
    def model(self) -> str:
        return self.demand.model

    @property
    def arrival(self) -> float:
        return self.demand.arrival

    @property
    def deadline(self) -> float:
        return self.demand.deadline

    @property
    def tpot_s(self) -> float:
        return self.demand.tpot_s

    @property
    def prompt_tokens(self) -> int:
        return self.demand.prompt_tokens

    @property
    def predicted_tokens(self) -> int:
        return self.demand.predicted_tokens

    @property
    def reserve_tokens(self) -> int:
        return self.demand.reserve_tokens

    @property
    def rejectable(self) -> bool:
        return self.demand.rejectable

    def prefill_on(self, backend: str) -> int:
        """Prompt tokens ``backend`` would compute: those not in its prefix cache."""
        return self.demand.prompt_tokens - self.cached.get(backend, 0)

    def kv_need_on(self, backend: str) -> int:
        """KV tokens it would take there: cached blocks are shared, not new."""
        return self.demand.reserve_tokens - self.cached.get(backend, 0)


@dataclass(frozen=True, slots=True)
class Placement:
    ticket: int
    backend: str
    priority: int | None = None
    model: str | None = None  # the model it is served as, set by the scheduler


@dataclass(frozen=True, slots=True)
class Rejection:
    """A request the scheduler will not serve, for its caller to answer. ``reason``:
    ``ttft_unattainable``, ``ttft_late`` (committed to at arrival, then no longer servable in
    time), ``tpot_unattainable``, ``no_ready_backend`` (held through a cold
    start past its deadline), ``no_backend`` (no backend is meant to serve the model), or
    ``queue_timeout`` (no slot within the wait it was given)."""

    ticket: int
    reason: str
    predicted_s: float = 0.0  # predicted time to first token that could not fit the budget
    budget_s: float = 0.0  # its TTFT budget left at the refusal (queue_timeout: the wait)


@dataclass(frozen=True, slots=True)
class Plan:
    placements: list[Placement] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    credits: dict[int, float] = field(default_factory=dict)
    activations: dict[str, Activation] = field(default_factory=dict)  # instance -> its state
    committed: list[int] = field(default_factory=list)  # tickets newly committed to
