"""What an operator reads of a running gateway: queues, backends, their latency models."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any

from aiohttp import web

from gateway.api.context import RUNTIME
from gateway.outliers import OutlierState
from gateway.state.load import LoadTotals


def _peers(totals: LoadTotals) -> dict[str, Any]:
    """Other replicas' load on a backend, as last synced."""
    return {
        "in_flight": totals.count,
        "kv_reserved_tokens": totals.kv_tokens,
        "context_tokens": totals.context,
        "tightest_tpot_ms": totals.min_tpot_s * 1000 if math.isfinite(totals.min_tpot_s) else None,
    }


def backend_stats(request: web.Request) -> list[dict[str, Any]]:
    services = request.app[RUNTIME].services
    now = time.monotonic()
    rows = []
    for b in services.fleet:
        batch, context = b.decoding()
        rows.append(
            {
                "name": b.name,
                "url": b.config.base_url,
                "state": "removing" if b.draining else b.config.state,
                "pool": b.config.pool,
                "healthy": b.healthy,
                "routable": b.routable,
                "models": sorted(b.models),
                "in_flight": b.in_flight,
                "decoding": batch,
                "mean_context": context,
                "pending_prefill_tokens": b.pending_prefill(),
                "kv_capacity_tokens": b.kv_capacity,
                "kv_reserved_tokens": sum(r.reserved_kv for r in b.inflight.values()),
                "other_replicas": _peers(services.scheduler.peer_load(b.name)),
                "engine": asdict(b.load) if b.load is not None else None,
                "latency_models": {
                    "prefill": {
                        **asdict(b.prefill.params),
                        "observations": b.prefill.observations,
                        "shortfall_p90": b.prefill.error,
                    },
                    "itl": {
                        **asdict(b.itl.params),
                        "observations": b.itl.observations,
                        "shortfall_p90": b.itl.error,
                    },
                },
                "adapters": services.fleet.adapters.state(b),
                "last_error": b.last_error,
                "outlier": _outlier(b.outlier, now),
            }
        )
    return rows


def _outlier(state: OutlierState, now: float) -> dict[str, Any]:
    """Why a backend is out of rotation, if it is (gateway.outliers)."""
    return {
        "ejected": state.ejected,
        "ejected_for_s": None
        if state.ejected_until is None
        else max(0.0, state.ejected_until - now),
        "reason": state.reason,
        "consecutive_failures": state.consecutive,
        "ejections": state.ejections_total,
    }


def _degrade(request: web.Request) -> dict[str, Any]:
    """Per model, whether degrading to its variants is on and the pressure behind it; and the
    requests degraded so far, per model, class and the variant that served them."""
    services = request.app[RUNTIME].services
    pressure = services.scheduler.pressure
    return {
        "pressure": pressure.state(time.monotonic()) if pressure is not None else {},
        "degraded": [
            {"model": model, "slo_class": slo_class, "served_model": served, "requests": count}
            for (model, slo_class, served), count in sorted(
                services.metrics.degraded_by_class().items()
            )
        ],
    }


async def stats(request: web.Request) -> web.Response:
    services = request.app[RUNTIME].services
    return web.json_response(
        {
            "config_version": services.config_version,
            "queues": dict(services.scheduler.queue_depths()),
            "backends": backend_stats(request),
            "degrade": _degrade(request),
            "tokenizers": {
                model: asdict(scale) for model, scale in services.tokens.scales().items()
            },
        }
    )
