"""Dynamic configuration: SLO classes, models and backends.

The models are frozen and forbid unknown fields, so one definition validates a config file, and
later admin input and stored payloads alike. A running gateway swaps a whole snapshot by
reference, so an in-flight request keeps the snapshot it started with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:/@+-]+$")]
# May a request be served by one of its model's variants (``ModelConfig.variants``)? ``never``;
# ``when_unattainable``: only where its own model's pools would refuse it; ``prefer_fast``: on
# the first variant that can meet its targets whenever degrading is on.
Degrade = Literal["never", "when_unattainable", "prefer_fast"]
DEGRADE_ORDER: dict[str, int] = {"never": 0, "when_unattainable": 1, "prefer_fast": 2}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SloClass(_Frozen):
    """A named latency objective: time to first token and time per output token.

    ``on_unattainable``: ``reject`` answers 429 at once when the TTFT target cannot be met;
    ``best_effort`` serves the request anyway, without a guarantee. ``protected`` (with
    ``scheduler.admission: arrival``): once admitted, a request of this class keeps its place
    against tighter requests that arrive later; unprotected, they may overtake it, and it is
    refused later if it then cannot be served in time, as at the deadline."""

    ttft_ms: float = Field(gt=0, le=3_600_000)
    tpot_ms: float = Field(gt=0, le=600_000)
    on_unattainable: Literal["reject", "best_effort"] = "reject"
    protected: bool = True
    degrade: Degrade = Field(
        default="never",
        description="Whether its requests may be served by a variant of their model while "
        "the model's pool is under pressure (never, when_unattainable, prefer_fast).",
    )


class LatencyPrior(_Frozen):
    """Where a backend's online latency models start (defaults: Llama-3.1-8B on one H100).

    Prefill: phi when the pending prompt tokens are at most theta, else alpha*tokens + beta.
    ITL(B, L) = a*B*L + b*B + c*L + d, B running requests, L their mean context (tokens)."""

    prefill_phi_ms: float = Field(default=15.0, gt=0)
    prefill_theta_tokens: float = Field(default=512, ge=0)
    prefill_alpha_ms: float = Field(default=0.01725, ge=0)
    prefill_beta_ms: float = Field(default=6.0)
    itl_a_ms: float = Field(default=0.00015, ge=0)
    itl_b_ms: float = Field(default=0.006, ge=0)
    itl_c_ms: float = Field(default=0.0, ge=0)
    itl_d_ms: float = Field(default=5.75, gt=0)

    def scaled(self, factor: float) -> LatencyPrior:
        """The same prior for hardware ``factor`` times slower."""
        fields = {
            name: value * factor if name != "prefill_theta_tokens" else value
            for name, value in self.model_dump().items()
        }
        return LatencyPrior(**fields)


class FairShareConfig(_Frozen):
    """Weighted fair share between tenants under overload (``gateway.scheduling.fairness``):
    service counted in tokens, a prompt token weighing ``prefill_weight`` and a generated
    one ``decode_weight``, per unit of the tenant's ``weight``, decayed with ``half_life_s``.
    Tenants within ``tolerance`` (relative) plus ``slack_tokens`` of each other rank alike.
    Each tenant that sent a request for a model within ``active_s`` is kept
    ``reserve_slots`` of that model's slots: requests of tenants served more may not take
    the last ones (0: ordering only)."""

    enabled: bool = True
    half_life_s: float = Field(default=30.0, gt=0, le=86_400)
    tolerance: float = Field(default=0.1, ge=0, le=10)
    slack_tokens: float = Field(default=2000.0, ge=0)
    prefill_weight: float = Field(default=1.0, ge=0, le=100)
    decode_weight: float = Field(default=2.0, ge=0, le=100)
    reserve_slots: int = Field(default=1, ge=0, le=10_000)
    active_s: float = Field(default=10.0, gt=0, le=86_400)


class DegradeConfig(_Frozen):
    """When requests may go to a model's variants: while the model's pressure, the decayed
    share of its requests that its own pools would refuse for their targets (the scale-out
    signal's reject share, counting those sent to a variant instead), is on. It turns on above
    ``enter_share``, and off once it is below ``leave_share`` with nothing of the model queued,
    after ``min_dwell_s`` on at least; counts decay with ``half_life_s``."""

    enter_share: float = Field(default=0.05, ge=0, le=1)
    leave_share: float = Field(default=0.01, ge=0, le=1)
    half_life_s: float = Field(default=10.0, gt=0, le=86_400)
    min_dwell_s: float = Field(default=5.0, ge=0, le=86_400)

    @model_validator(mode="after")
    def _check_band(self) -> Self:
        if self.leave_share > self.enter_share:
            raise ValueError("degrade.leave_share must not exceed degrade.enter_share")
        return self


class SchedulerConfig(_Frozen):
    """Which scheduling policy runs, and its parameters (ALGORITHMS.md §3, §4)."""

    policy: Literal["slo", "least_loaded"] = "slo"
    ldf: bool = True
    reject: bool = True
    vbs: bool = True
    credits: bool = True
    margin_ms: float = Field(default=50.0, ge=0)
    epsilon: float = Field(default=1.3, ge=1.0)
    admit_margin: float = Field(default=0.99, gt=0, le=1.0)
    urgent_ms: float = Field(default=100.0, ge=0)
    # When the TTFT guard refuses: "deadline" re-decides the whole queue each pass (a request
    # may be refused later, when tighter ones overtake it); "arrival" decides each request as
    # it arrives and protects those it admitted (gateway.scheduling.admission).
    admission: Literal["deadline", "arrival"] = "deadline"
    # At arrival, a reply in flight past its predicted length counts as going on for this
    # share again of what it has produced (0: as ending now).
    overrun_share: float = Field(default=0.3, ge=0, le=10)
    # At arrival, each backend's prefill and tokens take as much longer than its latency
    # models predict as they lately fell short (their p90 of observed over predicted).
    stretch_by_error: bool = True
    tick_ms: float = Field(default=10.0, gt=0)
    output_quantile: Literal["p50", "p90", "p95"] = Field(
        default="p90", description="Predicted output used for the KV reservation."
    )
    placement: Literal["guards", "rolling"] = Field(
        default="guards",
        description="Where an admitted request goes: the backend whose budgets it uses least "
        "(guards), or the macro instance with the most headroom and, inside it, sticky-cyclic "
        "rolling activation with EcoServe's check (rolling).",
    )
    fair_share: FairShareConfig = Field(default_factory=FairShareConfig)
    degrade: DegradeConfig = Field(default_factory=DegradeConfig)
    prefix_aware: bool = Field(
        default=True,
        description="Count what each backend is likely to hold in its prefix cache "
        "(gateway.prefix_index): prefill, the KV fit and placement use the uncached tokens.",
    )
    prefix_weight: float = Field(
        default=0.5,
        ge=0,
        le=10,
        description="Placement: how much a cached share of the prompt weighs against the "
        "share of its budgets a request would use.",
    )
    adapter_aware: bool = Field(
        default=True,
        description="Place LoRA adapters' requests where the adapter is loaded, and count a "
        "load's time in the TTFT guard where it must be loaded (false: any backend of the base "
        "model, loading there on arrival, uncounted).",
    )
    adapter_weight: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="Placement: how much having to load a request's adapter weighs against "
        "the share of its budgets it would use.",
    )
    session_weight: float = Field(
        default=0.2,
        ge=0,
        le=10,
        description="Placement: how much the backend a session's last request went to "
        "weighs (x-session-id or the body's user field).",
    )


class PoolConfig(_Frozen):
    """A pool: the backends serving one model, partitioned into macro instances of between
    ``min_size`` and ``max_size`` backends (ALGORITHMS.md §5). A backend's pool is its
    ``pool`` field, else the first model it is meant to serve, else ``default``."""

    min_size: int = Field(default=1, ge=1, le=1000)
    max_size: int = Field(default=8, ge=1, le=1000)
    webhook_url: HttpUrl | None = Field(
        default=None, description="Called with the pool's scale recommendation when it changes."
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        # A split of a full instance must leave two halves of at least min_size each.
        if self.max_size + 1 < 2 * self.min_size:
            raise ValueError(
                f"max_size {self.max_size} must be at least 2*min_size-1 "
                f"({2 * self.min_size - 1}) so that a split leaves two valid instances"
            )
        return self


class VariantConfig(_Frozen):
    """A cheaper deployment of a model (a quantized or smaller one): the model name its
    backends serve, and optionally the one pool of backends to use for it."""

    model: Name
    pool: Name | None = None


class AdapterConfig(_Frozen):
    """A LoRA adapter of ``base`` that the gateway loads where it is needed
    (``/v1/load_lora_adapter``): ``path`` is its ``lora_path`` as the servers see it;
    ``load_ms`` the time a load is expected to take until loads have been measured. ``pool``,
    when set, pins it to that pool: it is loaded only on the pool's backends and never
    evicted from them."""

    base: Name
    path: str = Field(min_length=1, max_length=4096)
    load_ms: float = Field(default=1000.0, gt=0, le=600_000)
    pool: Name | None = None


class ModelConfig(_Frozen):
    """A model's defaults, and its ``variants`` in order of preference: where its requests
    may be degraded to (``SloClass.degrade``, ``TenantConfig.degrade``)."""

    name: Name
    default_class: Name | None = None
    variants: tuple[VariantConfig, ...] = Field(default=(), max_length=16)

    @model_validator(mode="after")
    def _check_variants(self) -> Self:
        names = [v.model for v in self.variants]
        if self.name in names:
            raise ValueError(f"model {self.name!r} cannot be a variant of itself")
        if len(set(names)) != len(names):
            raise ValueError(f"model {self.name!r} names a variant more than once")
        return self


BackendState = Literal["active", "draining", "disabled"]


class BackendConfig(_Frozen):
    """One backend. ``models``, when set, is what it is meant to serve: it takes a model's
    traffic once its own ``/v1/models`` lists that model too (or an adapter of it), so a
    backend can be retargeted before it has been restarted on the new model. ``state``:
    ``active`` takes traffic; ``draining`` takes none new and finishes what it has;
    ``disabled`` takes none."""

    name: Name
    url: HttpUrl
    engine: Literal["vllm"] = "vllm"
    models: tuple[Name, ...] = Field(
        default=(), description="Models it is meant to serve; empty: whatever it lists."
    )
    pool: Name | None = Field(default=None, description="Its pool; the model's own if unset.")
    state: BackendState = "active"
    max_in_flight: int = Field(default=256, ge=1, le=100_000)
    weight: float = Field(default=1.0, gt=0)
    api_key: str | None = None
    priority_scheduling: bool = Field(
        default=False, description="The backend runs vLLM with --scheduling-policy priority."
    )
    kv_capacity_tokens: int | None = Field(
        default=None, ge=1, description="KV-cache size; read from vLLM's metrics when unset."
    )
    max_loras: int | None = Field(
        default=None,
        ge=0,
        le=1024,
        description="LoRA adapters it holds at once (vLLM's --max-loras); read from its "
        "metrics when unset; 0: the gateway loads none there.",
    )
    latency_prior: LatencyPrior | None = None

    @property
    def base_url(self) -> str:
        return str(self.url).rstrip("/")

    @property
    def pool_name(self) -> str:
        if self.pool is not None:
            return self.pool
        return self.models[0] if self.models else "default"


class TenantLimits(_Frozen):
    """A tenant's rate limits, over every replica (``gateway.tenancy``). Unset: no limit.

    ``requests_per_second``: a bucket of that many requests refilled continuously, so a burst
    of up to one second's worth passes. ``tokens_per_minute``: prompt plus completion tokens,
    reserved at admission from the predicted reply and settled with the true count; the
    bucket holds one minute's worth. ``max_concurrent``: requests in flight at once."""

    requests_per_second: float | None = Field(default=None, gt=0, le=1_000_000)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=10**12)
    max_concurrent: int | None = Field(default=None, ge=1, le=1_000_000)


class TenantConfig(_Frozen):
    """What one tenant's requests may ask for (its client keys name it).

    ``models``: the models it may use (unset: any). ``classes``: the SLO classes it may name
    (unset: any). ``min_ttft_ms``/``min_tpot_ms``: the tightest targets it may ask for.
    ``default_class``: its requests' class when they name none. ``on_excess``: a request that
    asks for more is refused (403 ``slo_not_permitted``) or clamped to the entitlement.
    ``degrade``: how far its requests may be degraded to a model's variant, at most (the
    stricter of this and their class's applies). ``weight``: its share of the fleet under
    overload, against other tenants' weights (a tenant without an entry weighs 1).
    ``limits``: its rate limits."""

    models: tuple[str, ...] | None = None
    classes: tuple[Name, ...] | None = None
    min_ttft_ms: float | None = Field(default=None, gt=0)
    min_tpot_ms: float | None = Field(default=None, gt=0)
    default_class: Name | None = None
    on_excess: Literal["refuse", "clamp"] = "refuse"
    degrade: Degrade | None = Field(
        default=None,
        description="Caps how far its requests may be degraded to a variant: the stricter "
        "of this and their class's degrade applies (unset: the class's).",
    )
    weight: float = Field(default=1.0, gt=0, le=1000)
    limits: TenantLimits = Field(default_factory=TenantLimits)


class GatewayConfig(_Frozen):
    slo_classes: dict[Name, SloClass] = Field(
        default_factory=lambda: {"default": SloClass(ttft_ms=2000, tpot_ms=100)}
    )
    default_class: Name = "default"
    models: tuple[ModelConfig, ...] = ()
    backends: tuple[BackendConfig, ...] = ()
    pools: dict[Name, PoolConfig] = Field(default_factory=dict)
    macro_instances: dict[Name, tuple[tuple[Name, ...], ...]] = Field(
        default_factory=dict,
        description="Each pool's macro instances, kept by the gateway as backends come and go.",
    )
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    latency_prior: LatencyPrior = Field(default_factory=LatencyPrior)
    adapters: dict[Name, AdapterConfig] = Field(
        default_factory=dict,
        max_length=100_000,
        description="LoRA adapters the gateway loads where needed, by the name requests use.",
    )
    tenants: dict[Name, TenantConfig] = Field(
        default_factory=dict,
        max_length=10_000,
        description="Entitlements, limits and weight per tenant; a tenant without an entry is "
        "not restricted and weighs 1.",
    )

    @model_validator(mode="after")
    def _check_references(self) -> Self:
        if self.default_class not in self.slo_classes:
            raise ValueError(f"default_class {self.default_class!r} is not among slo_classes")
        for model in self.models:
            if model.default_class is not None and model.default_class not in self.slo_classes:
                raise ValueError(
                    f"model {model.name!r} names unknown default_class {model.default_class!r}"
                )
        for name, tenant in self.tenants.items():
            named = [*(tenant.classes or ()), tenant.default_class]
            unknown = sorted({c for c in named if c is not None and c not in self.slo_classes})
            if unknown:
                raise ValueError(f"tenant {name!r} names unknown SLO classes {unknown}")
            allowed = tenant.classes
            if allowed is not None and tenant.default_class not in (None, *allowed):
                raise ValueError(f"tenant {name!r}: default_class is not among its classes")
        for name, adapter in self.adapters.items():
            if name == adapter.base:
                raise ValueError(f"adapter {name!r} cannot be its own base model")
        names = [b.name for b in self.backends]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"backend names must be unique: {duplicates}")
        return self

    def pool(self, name: str) -> PoolConfig:
        return self.pools.get(name) or PoolConfig()

    def tenant_weight(self, tenant: str | None) -> float:
        entry = self.tenants.get(tenant) if tenant is not None else None
        return entry.weight if entry is not None else 1.0

    def variants_of(self, model: str) -> tuple[VariantConfig, ...]:
        for entry in self.models:
            if entry.name == model:
                return entry.variants
        return ()

    def class_for_model(self, model: str) -> str:
        for entry in self.models:
            if entry.name == model and entry.default_class is not None:
                return entry.default_class
        return self.default_class


def parse_config_text(text: str, *, suffix: str) -> GatewayConfig:
    """Parse YAML (``.yaml``/``.yml``) or JSON text into a validated config."""
    raw: Any = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    return GatewayConfig.model_validate(raw or {})


def load_config(path: Path) -> GatewayConfig:
    return parse_config_text(path.read_text(encoding="utf-8"), suffix=path.suffix.lower())
