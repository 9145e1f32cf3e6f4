"""Prometheus metrics, in a registry owned by one app (no process-wide registry)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.config import GatewayConfig
from gateway.fleet import Fleet
from gateway.limiter import TenantLimiter
from gateway.records import RequestRecord
from gateway.scaling import PoolState
from gateway.scheduling.fairness import FairShare
from gateway.state.breaker import Breaker
from gateway.tenant_metrics import TenantMetrics

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    20.0,
    30.0,
    60.0,
)
_TPOT_BUCKETS = (
    0.002,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.5,
    1.0,
)


class _FleetCollector(Collector):
    """Gauges read from live state at scrape time."""

    def __init__(self, fleet: Fleet, queue_depths: Callable[[], dict[str, int]]) -> None:
        self._fleet = fleet
        self._queue_depths = queue_depths

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "sluice_queue_depth", "Requests waiting in the gateway queue", labels=["model"]
        )
        depths = self._queue_depths()
        # Every model the fleet serves, waiting or not: a series must not vanish at zero.
        for model in sorted(self._fleet.known_models() | depths.keys()):
            queue.add_metric([model], depths.get(model, 0))
        yield queue

        def backend_gauge(name: str, documentation: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=["backend"])

        in_flight = backend_gauge("sluice_backend_in_flight", "Requests the gateway has in flight")
        healthy = backend_gauge("sluice_backend_healthy", "1 when the backend passes its probes")
        running = backend_gauge("sluice_backend_engine_running", "Running, as the engine says")
        waiting = backend_gauge("sluice_backend_engine_waiting", "Waiting, as the engine says")
        kv = backend_gauge("sluice_backend_kv_usage", "KV-cache usage (0..1), as the engine says")
        ejected = backend_gauge(
            "sluice_backend_ejected", "1 while outlier detection keeps the backend out"
        )
        ejections = CounterMetricFamily(
            "sluice_backend_ejections",
            "Times outlier detection ejected the backend",
            labels=["backend"],
        )
        for backend in self._fleet:
            in_flight.add_metric([backend.name], backend.in_flight)
            healthy.add_metric([backend.name], 1.0 if backend.healthy else 0.0)
            ejected.add_metric([backend.name], 1.0 if backend.outlier.ejected else 0.0)
            ejections.add_metric([backend.name], backend.outlier.ejections_total)
            load = backend.load
            if load is not None:
                for family, value in (
                    (running, load.running),
                    (waiting, load.waiting),
                    (kv, load.kv_usage),
                ):
                    if value is not None:
                        family.add_metric([backend.name], value)
        yield from (in_flight, healthy, ejected, ejections, running, waiting, kv)
        estimates = GaugeMetricFamily(
            "sluice_backend_latency_model",
            "Online latency-model parameters (seconds; theta in tokens)",
            labels=["backend", "model", "param"],
        )
        observations = GaugeMetricFamily(
            "sluice_backend_latency_observations",
            "Observations behind each latency model",
            labels=["backend", "model"],
        )
        for backend in self._fleet:
            for kind, fitted in (("prefill", backend.prefill), ("itl", backend.itl)):
                for name, value in asdict(fitted.params).items():
                    estimates.add_metric([backend.name, kind, name], value)
                observations.add_metric([backend.name, kind], fitted.observations)
        yield from (estimates, observations)


class _PoolCollector(Collector):
    """Each pool's macro instances and scale recommendation, read at scrape time."""

    def __init__(
        self,
        pools: Callable[[], Mapping[str, PoolState]],
        instances: Callable[[], Mapping[str, int]],
    ) -> None:
        self._pools = pools
        self._instances = instances

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, documentation: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=["pool"])

        count = gauge("sluice_pool_macro_instances", "Macro instances in the pool")
        for pool, number in sorted(self._instances().items()):
            count.add_metric([pool], number)
        yield count
        advice = gauge(
            "sluice_pool_scale_recommendation",
            "Backends to add (positive) or give back (negative); 0 holds",
        )
        ready = gauge("sluice_pool_ready_backends", "Backends taking traffic")
        ratio = gauge("sluice_pool_ttft_ratio", "Moving average of TTFT over its target")
        rejects = gauge(
            "sluice_pool_ttft_reject_share", "Moving share of requests rejected for their TTFT"
        )
        saved = gauge(
            "sluice_pool_saved_tpot_seconds", "Mean saved TPOT of the streams decoding now"
        )
        for pool, state in sorted(self._pools().items()):
            s = state.signals
            advice.add_metric([pool], state.recommendation.backends)
            ready.add_metric([pool], s.ready)
            ratio.add_metric([pool], s.ttft_ratio)
            rejects.add_metric([pool], s.reject_share)
            if math.isfinite(s.saved_tpot_s):
                saved.add_metric([pool], s.saved_tpot_s)
        yield from (advice, ready, ratio, rejects, saved)


class _TargetCollector(Collector):
    """Each SLO class's targets, from the config in force, to draw latencies against."""

    def __init__(self, config: Callable[[], GatewayConfig]) -> None:
        self._config = config

    def collect(self) -> Iterator[Metric]:
        targets = GaugeMetricFamily(
            "sluice_slo_target_seconds",
            "Each SLO class's latency target",
            labels=["slo_class", "objective"],
        )
        for name, slo in sorted(self._config().slo_classes.items()):
            targets.add_metric([name, "ttft"], slo.ttft_ms / 1000)
            targets.add_metric([name, "tpot"], slo.tpot_ms / 1000)
        yield targets


class _BreakerCollector(Collector):
    """The shared store's circuit breaker (gateway.state.breaker)."""

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    def collect(self) -> Iterator[Metric]:
        b = self._breaker
        up = GaugeMetricFamily(
            "sluice_shared_state_up", "1 while the shared store (Redis) answers in time"
        )
        up.add_metric([], 0.0 if b.open else 1.0)
        trips = CounterMetricFamily(
            "sluice_shared_state_breaker_trips", "Times the store's circuit breaker opened"
        )
        trips.add_metric([], b.trips)
        skipped = CounterMetricFamily(
            "sluice_shared_state_calls_skipped",
            "Store calls answered at once from local state while the breaker was open",
        )
        skipped.add_metric([], b.skipped)
        yield from (up, trips, skipped)


class GatewayMetrics:
    def __init__(self, fleet: Fleet, queue_depths: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "slo_class"]
        self.requests = Counter(
            "sluice_requests",
            "Finished requests by outcome",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self.good = Counter(
            "sluice_requests_good",
            "Requests that met both latency targets",
            labels,
            registry=self.registry,
        )
        self.admitted = Counter(
            "sluice_admitted",
            "Requests dispatched to a backend",
            labels,
            registry=self.registry,
        )
        self.degraded = Counter(
            "sluice_degraded",
            "Requests served by a variant of the model they asked for",
            [*labels, "served_model", "outcome"],
            registry=self.registry,
        )
        self.prefix_cached = Counter(
            "sluice_prefix_cached_tokens",
            "Prompt tokens found in a backend's prefix cache, over the replies that report "
            "them: as the gateway's prefix index expected (source=expected) and as the "
            "backend reported (source=reported)",
            ["backend", "source"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "sluice_rejected",
            "Requests refused, by reason",
            [*labels, "reason"],
            registry=self.registry,
        )
        self.late = Counter(
            "sluice_requests_late",
            "Served requests that missed a latency target",
            labels,
            registry=self.registry,
        )
        self.time_to_reject = Histogram(
            "sluice_time_to_reject_seconds",
            "Arrival to the refusal",
            ["model"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
            registry=self.registry,
        )
        self.retries = Counter(
            "sluice_upstream_retries",
            "Requests retried on another backend",
            ["model"],
            registry=self.registry,
        )
        self.shared_refusals = Counter(
            "sluice_shared_admission_refusals",
            "Placements the shared store refused: other replicas had filled the backend",
            ["backend"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "sluice_ttft_seconds",
            "Time to first token, as the gateway saw it",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tpot = Histogram(
            "sluice_tpot_seconds",
            "Mean time per output token after the first",
            labels,
            buckets=_TPOT_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "sluice_request_seconds",
            "Arrival to last byte",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "sluice_queue_wait_seconds",
            "Arrival to dispatch",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_FleetCollector(fleet, queue_depths))
        self.tenants: TenantMetrics | None = None

    def watch_tenants(
        self,
        config: Callable[[], GatewayConfig],
        limiter: TenantLimiter,
        fair: Callable[[], FairShare | None],
        clock: Callable[[], float],
    ) -> None:
        self.tenants = TenantMetrics(self.registry, config, limiter, fair, clock)

    def watch_pools(
        self,
        pools: Callable[[], Mapping[str, PoolState]],
        instances: Callable[[], Mapping[str, int]],
    ) -> None:
        self.registry.register(_PoolCollector(pools, instances))

    def watch_config(self, config: Callable[[], GatewayConfig]) -> None:
        self.registry.register(_TargetCollector(config))

    def watch_breaker(self, breaker: Breaker) -> None:
        self.registry.register(_BreakerCollector(breaker))

    def observe(self, record: RequestRecord) -> None:
        if self.tenants is not None:
            self.tenants.observe(record)
        labels = (record.model, record.slo.class_name)
        self.requests.labels(*labels, record.outcome).inc()
        if record.degraded:
            self.degraded.labels(*labels, record.served_model, record.outcome).inc()
        if record.queue_s is not None:
            self.queue_wait.labels(record.model).observe(record.queue_s)
        if record.outcome == "rejected":
            self.rejected.labels(*labels, record.reject_reason or "unknown").inc()
            if record.e2e_s is not None:
                self.time_to_reject.labels(record.model).observe(record.e2e_s)
        if record.outcome != "ok":
            return
        if record.cached_tokens is not None and record.expected_cached_tokens is not None:
            backend = record.backend or "unknown"
            self.prefix_cached.labels(backend, "expected").inc(record.expected_cached_tokens)
            self.prefix_cached.labels(backend, "reported").inc(record.cached_tokens)
        if record.met_slo:
            self.good.labels(*labels).inc()
        else:
            self.late.labels(*labels).inc()
        for histogram, value in (
            (self.ttft, record.ttft_s),
            (self.tpot, record.tpot_s),
            (self.e2e, record.e2e_s),
        ):
            if value is not None:
                histogram.labels(*labels).observe(value)

    def degraded_by_class(self) -> dict[tuple[str, str, str], int]:
        """(model, class, served model) -> requests degraded so far, every outcome summed."""
        counts: dict[tuple[str, str, str], int] = {}
        for metric in self.degraded.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    key = (labels["model"], labels["slo_class"], labels["served_model"])
                    counts[key] = counts.get(key, 0) + int(sample.value)
        return counts

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
