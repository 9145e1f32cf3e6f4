"""Sluice's Grafana dashboard, built with Grafana's foundation SDK (grafana-foundation-sdk).

    python deploy/grafana/build_dashboard.py           # writes deploy/grafana/sluice.json
    python deploy/grafana/build_dashboard.py --check   # exit 1 if the file is out of date

Every query reads metrics a live gateway exports (tests/integration/test_observability.py
holds the two together).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DataSourceRef
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).with_name("sluice.json")
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "[$__rate_interval]"
BY_CLASS = "sum by (slo_class)"


def _query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)


def _series(
    title: str, unit: str, queries: list[prometheus.Dataquery], *, width: int = 12
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .unit(unit)
        .datasource(PROMETHEUS)
        .height(8)
        .span(width)
        .legend(
            VizLegendOptions()
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    for query in queries:
        panel = panel.with_target(query)
    return panel


def build() -> dashboard.Dashboard:
    good = f"{BY_CLASS} (rate(sluice_requests_good_total{RATE}))"
    finished = f"{BY_CLASS} (rate(sluice_requests_total{RATE}))"
    board = (
        dashboard.Dashboard("Sluice")
        .uid("sluice-gateway")
        .description("SLO-aware gateway: goodput, attainment, refusals, backends, pools")
        .tags(["sluice", "llm", "slo"])
        .refresh("10s")
        .time("now-30m", "now")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_row(dashboard.Row("Service level"))
        .with_panel(
            stat.Panel()
            .title("Attainment (good / finished), last 5 min")
            .unit("percentunit")
            .datasource(PROMETHEUS)
            .height(4)
            .span(6)
            .with_target(
                _query(
                    "sum(increase(sluice_requests_good_total[5m])) / "
                    "clamp_min(sum(increase(sluice_requests_total[5m])), 1)",
                    "attainment",
                )
            )
        )
        .with_panel(
            stat.Panel()
            .title("Goodput (good req/s)")
            .unit("reqps")
            .datasource(PROMETHEUS)
            .height(4)
            .span(6)
            .with_target(_query(f"sum(rate(sluice_requests_good_total{RATE}))", "goodput"))
        )
        .with_panel(
            stat.Panel()
            .title("Shared state (Redis) up")
            .datasource(PROMETHEUS)
            .height(4)
            .span(6)
            .with_target(_query("min(sluice_shared_state_up)", "up"))
        )
        .with_panel(
            stat.Panel()
            .title("Backends ejected")
            .datasource(PROMETHEUS)
            .height(4)
            .span(6)
            .with_target(_query("sum(max by (backend) (sluice_backend_ejected))", "ejected"))
        )
        .with_panel(_series("Goodput by SLO class", "reqps", [_query(good, "{{slo_class}}")]))
        .with_panel(
            _series(
                "Attainment by SLO class",
                "percentunit",
                [_query(f"{good} / clamp_min({finished}, 1e-9)", "{{slo_class}}")],
            )
        )
        .with_row(dashboard.Row("Refusals"))
        .with_panel(
            _series(
                "Refusals by reason",
                "reqps",
                [_query(f"sum by (reason) (rate(sluice_rejected_total{RATE}))", "{{reason}}")],
            )
        )
        .with_panel(
            _series(
                "Time to reject (p50, p90, p99)",
                "s",
                [
                    _query(
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(sluice_time_to_reject_seconds_bucket{RATE})))",
                        f"p{round(q * 100)}",
                        ref,
                    )
                    for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
                ],
            )
        )
        .with_row(dashboard.Row("Latency against targets"))
        .with_panel(
            _series(
                "TTFT p99 by class, and its target",
                "s",
                [
                    _query(
                        "histogram_quantile(0.99, sum by (le, slo_class) "
                        f"(rate(sluice_ttft_seconds_bucket{RATE})))",
                        "p99 {{slo_class}}",
                    ),
                    _query(
                        'max by (slo_class) (sluice_slo_target_seconds{objective="ttft"})',
                        "target {{slo_class}}",
                        "B",
                    ),
                ],
            )
        )
        .with_panel(
            _series(
                "TPOT p99 by class, and its target",
                "s",
                [
                    _query(
                        "histogram_quantile(0.99, sum by (le, slo_class) "
                        f"(rate(sluice_tpot_seconds_bucket{RATE})))",
                        "p99 {{slo_class}}",
                    ),
                    _query(
                        'max by (slo_class) (sluice_slo_target_seconds{objective="tpot"})',
                        "target {{slo_class}}",
                        "B",
                    ),
                ],
            )
        )
        .with_panel(
            heatmap.Panel()
            .title("TTFT distribution")
            .datasource(PROMETHEUS)
            .height(8)
            .span(12)
            .with_target(
                _query(
                    f"sum by (le) (increase(sluice_ttft_seconds_bucket{RATE}))", "{{le}}"
                ).format(PromQueryFormat.HEATMAP)
            )
        )
        .with_panel(
            _series(
                "Queue depth and wait (p99)",
                "short",
                [
                    _query("sum by (model) (sluice_queue_depth)", "waiting {{model}}"),
                    _query(
                        "histogram_quantile(0.99, sum by (le, model) "
                        f"(rate(sluice_queue_wait_seconds_bucket{RATE})))",
                        "p99 wait s {{model}}",
                        "B",
                    ),
                ],
            )
        )
        .with_row(dashboard.Row("Backends"))
        .with_panel(
            _series(
                "In flight per backend (all replicas)",
                "short",
                [_query("sum by (backend) (sluice_backend_in_flight)", "{{backend}}")],
            )
        )
        .with_panel(
            _series(
                "KV-cache use per backend",
                "percentunit",
                [_query("max by (backend) (sluice_backend_kv_usage)", "{{backend}}")],
            )
        )
        .with_panel(
            _series(
                "Prefix-cache hits per backend: as the index expected and as reported",
                "short",
                [
                    _query(
                        f"sum by (backend, source) (rate(sluice_prefix_cached_tokens_total{RATE}))",
                        "{{backend}} {{source}} tokens/s",
                    )
                ],
            )
        )
        .with_panel(
            _series(
                "Fitted inter-token latency intercept (d) and per-request slope (b)",
                "s",
                [
                    _query(
                        'avg by (backend, param) (sluice_backend_latency_model{model="itl",'
                        ' param=~"b|d"})',
                        "{{backend}} {{param}}",
                    )
                ],
            )
        )
        .with_panel(
            _series(
                "Health and ejections",
                "short",
                [
                    _query("min by (backend) (sluice_backend_healthy)", "healthy {{backend}}"),
                    _query("max by (backend) (sluice_backend_ejected)", "ejected {{backend}}", "B"),
                ],
            )
        )
        .with_row(dashboard.Row("Tenants"))
        .with_panel(
            _series(
                "Goodput and refusals per tenant",
                "reqps",
                [
                    _query(
                        f"sum by (tenant) (rate(sluice_tenant_requests_good_total{RATE}))",
                        "good {{tenant}}",
                    ),
                    _query(
                        f"sum by (tenant) (rate(sluice_tenant_rejected_total{RATE}))",
                        "refused {{tenant}}",
                        "B",
                    ),
                ],
            )
        )
        .with_panel(
            _series(
                "Refusals per tenant, by reason (rate limits, SLO guards)",
                "reqps",
                [
                    _query(
                        f"sum by (tenant, reason) (rate(sluice_tenant_rejected_total{RATE}))",
                        "{{tenant}} {{reason}}",
                    )
                ],
            )
        )
        .with_panel(
            _series(
                "Tokens per tenant",
                "short",
                [
                    _query(
                        f"sum by (tenant, kind) (rate(sluice_tenant_tokens_total{RATE}))",
                        "{{tenant}} {{kind}}",
                    )
                ],
            )
        )
        .with_panel(
            _series(
                "Rate-limit headroom and fair-share service",
                "short",
                [
                    _query(
                        "min by (tenant, limit) (sluice_tenant_limit_remaining)",
                        "{{tenant}} {{limit}} left",
                    ),
                    _query("max by (tenant) (sluice_tenant_service)", "{{tenant}} service", "B"),
                ],
            )
        )
        .with_row(dashboard.Row("Pools and shared state"))
        .with_panel(
            _series(
                "Scale recommendation (backends to add, negative: give back)",
                "short",
                [_query("max by (pool) (sluice_pool_scale_recommendation)", "{{pool}}")],
            )
        )
        .with_panel(
            _series(
                "Pool signals: TTFT over target, TTFT refusal share",
                "percentunit",
                [
                    _query("max by (pool) (sluice_pool_ttft_ratio)", "TTFT/target {{pool}}"),
                    _query(
                        "max by (pool) (sluice_pool_ttft_reject_share)", "refused {{pool}}", "B"
                    ),
                ],
            )
        )
        .with_panel(
            _series(
                "Redis: up, breaker trips, calls served locally",
                "short",
                [
                    _query("min(sluice_shared_state_up)", "up"),
                    _query(
                        f"sum(rate(sluice_shared_state_breaker_trips_total{RATE}))", "trips/s", "B"
                    ),
                    _query(
                        f"sum(rate(sluice_shared_state_calls_skipped_total{RATE}))",
                        "skipped calls/s",
                        "C",
                    ),
                ],
            )
        )
    )
    return board


def render() -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python {Path(__file__)}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
