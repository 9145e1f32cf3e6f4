"""Per-tenant Prometheus series. Label cardinality is bounded by the config: a tenant with an
entry in ``tenants`` is its own label, any other tenant counts as ``other``, and requests with
no tenant (no client keys in use) as ``none``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.config import GatewayConfig
from gateway.limiter import TenantLimiter
from gateway.records import RequestRecord
from gateway.scheduling.fairness import FairShare

OTHER, NONE = "other", "none"


def tenant_label(config: GatewayConfig, tenant: str | None) -> str:
    if tenant is None:
        return NONE
    return tenant if tenant in config.tenants else OTHER


class _TenantCollector(Collector):
    """Limiter state and fair share, read at scrape time (no store call)."""

    def __init__(
        self,
        config: Callable[[], GatewayConfig],
        limiter: TenantLimiter,
        fair: Callable[[], FairShare | None],
        clock: Callable[[], float],
    ) -> None:
        self._config, self._limiter, self._fair, self._clock = config, limiter, fair, clock

    def collect(self) -> Iterator[Metric]:
        config, limiter, fair = self._config(), self._limiter, self._fair()
        remaining = GaugeMetricFamily(
            "sluice_tenant_limit_remaining",
            "What is left in the tenant's rate-limit bucket, as of its last check here",
            labels=["tenant", "limit"],
        )
        concurrent = GaugeMetricFamily(
            "sluice_tenant_concurrent",
            "The tenant's requests in flight across replicas, as of its last check here",
            labels=["tenant"],
        )
        weight = GaugeMetricFamily(
            "sluice_tenant_weight", "The tenant's fair-share weight", labels=["tenant"]
        )
        service = GaugeMetricFamily(
            "sluice_tenant_service",
            "Recent weighted service (decayed weighted tokens per unit of weight)",
            labels=["tenant"],
        )
        now = self._clock()
        for name, entry in sorted(config.tenants.items()):
            weight.add_metric([name], entry.weight)
            if fair is not None:
                service.add_metric([name], fair.service(name, now))
            state = limiter.last(name)
            if state is None:
                continue
            if state.requests_remaining is not None:
                remaining.add_metric([name, "requests"], state.requests_remaining)
            if state.tokens_remaining is not None:
                remaining.add_metric([name, "tokens"], state.tokens_remaining)
            if entry.limits.max_concurrent is not None:
                concurrent.add_metric([name], state.concurrent)
        yield from (remaining, concurrent, weight, service)


class TenantMetrics:
    """Counters observed per finished request, and the gauges read at scrape time."""

    def __init__(
        self,
        registry: CollectorRegistry,
        config: Callable[[], GatewayConfig],
        limiter: TenantLimiter,
        fair: Callable[[], FairShare | None],
        clock: Callable[[], float],
    ) -> None:
        self._config = config
        self.requests = Counter(
            "sluice_tenant_requests",
            "Finished requests per tenant, by outcome",
            ["tenant", "outcome"],
            registry=registry,
        )
        self.good = Counter(
            "sluice_tenant_requests_good",
            "The tenant's requests that met both latency targets",
            ["tenant"],
            registry=registry,
        )
        self.rejected = Counter(
            "sluice_tenant_rejected",
            "The tenant's requests refused, by reason (rate limits included)",
            ["tenant", "reason"],
            registry=registry,
        )
        self.tokens = Counter(
            "sluice_tenant_tokens",
            "Tokens the tenant's requests used, by kind",
            ["tenant", "kind"],
            registry=registry,
        )
        registry.register(_TenantCollector(config, limiter, fair, clock))

    def observe(self, record: RequestRecord) -> None:
        label = tenant_label(self._config(), record.tenant)
        self.requests.labels(label, record.outcome).inc()
        if record.outcome == "rejected":
            self.rejected.labels(label, record.reject_reason or "unknown").inc()
        if record.dispatch is not None:
            self.tokens.labels(label, "prompt").inc(record.served_prompt_tokens)
            self.tokens.labels(label, "completion").inc(record.tokens)
        if record.outcome == "ok" and record.met_slo:
            self.good.labels(label).inc()
