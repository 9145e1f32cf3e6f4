"""Scale recommendations per pool (ALGORITHMS.md §5 scale signals, §6 cold start).

Sluice does not start or stop servers; it tells an autoscaler what it sees. Per pool:
  * scale out when the moving average of TTFT over its target exceeds 1, when the moving
    share of requests rejected for their TTFT (or sent to a variant's pool because this one
    would have refused them) exceeds ``reject_share``, or, in a cold start
    (no ready backend, requests waiting), by one backend per ``cold_start_per_backend``
    queued requests;
  * scale in when the mean saved TPOT of the pool's decoding streams exceeds
    T_TTFT * (n + 1) / n (n ready backends, T_TTFT the moving average of the TTFT targets),
    nothing is queued and nothing was rejected lately; the backend to give back follows the
    contraction rule (``macro.removal_candidate``).
The decision is a pure function of the signals; ``Scaler`` gathers them once a period,
publishes them as gauges and in the admin API, and calls the pool's webhook on a change.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import aiohttp

from gateway.config import GatewayConfig
from gateway.fleet import Fleet
from gateway.records import RecordLog, RequestRecord
from gateway.scheduling.macro import bounds_of, pool_members, removal_candidate

log = logging.getLogger(__name__)
Action = Literal["scale_out", "scale_in", "hold"]
REJECTED_FOR_TTFT = frozenset({"ttft_unattainable", "ttft_late", "no_ready_backend"})


@dataclass(frozen=True, slots=True)
class Signals:
    """What one pool looks like at one moment."""

    ready: int  # backends taking traffic
    queued: int
    ttft_ratio: float  # moving average of TTFT / its target, over served requests
    reject_share: float  # moving share of requests rejected for their TTFT
    ttft_target_s: float  # moving average of the TTFT targets
    saved_tpot_s: float  # mean saved TPOT of the streams decoding now; nan with none


@dataclass(frozen=True, slots=True)
class Thresholds:
    reject_share: float = 0.05
    cold_start_per_backend: int = 32


@dataclass(frozen=True, slots=True)
class Recommendation:
    action: Action
    backends: int  # how many to add (positive) or give back (negative)
    reason: str
    candidate: str | None = None  # the backend to give back, on scale-in


def recommend(s: Signals, candidate: str | None, limits: Thresholds) -> Recommendation:
    if s.ready == 0:
        if s.queued == 0:
            return Recommendation("hold", 0, "no ready backend and nothing waiting")
        count = math.ceil(s.queued / limits.cold_start_per_backend)
        return Recommendation("scale_out", count, f"cold start: {s.queued} requests waiting")
    if s.ttft_ratio > 1.0:
        return Recommendation(
            "scale_out", 1, f"moving-average TTFT is {s.ttft_ratio:.2f}x its target"
        )
    if s.reject_share > limits.reject_share:
        return Recommendation(
            "scale_out", 1, f"{s.reject_share:.0%} of requests rejected for their TTFT lately"
        )
    if s.ready > 1 and s.queued == 0 and s.reject_share == 0.0 and not math.isnan(s.saved_tpot_s):
        threshold = s.ttft_target_s * (s.ready + 1) / s.ready
        if s.saved_tpot_s > threshold:
            return Recommendation(
                "scale_in",
                -1,
                f"mean saved TPOT {s.saved_tpot_s:.2f}s exceeds T_TTFT*(n+1)/n = {threshold:.2f}s",
                candidate,
            )
    return Recommendation("hold", 0, "within targets")


@dataclass(slots=True)
class _Averages:
    """Exponentially weighted moving averages of one pool's finished requests."""

    ttft_ratio: float = 0.0
    reject_share: float = 0.0
    ttft_target_s: float = math.nan

    def add(self, record: RequestRecord, alpha: float) -> None:
        rejected = record.outcome == "rejected" and record.reject_reason in REJECTED_FOR_TTFT
        self.reject_share += alpha * (float(rejected) - self.reject_share)
        self._target(record, alpha)
        ttft = record.ttft_s
        if record.outcome == "ok" and ttft is not None and record.slo.ttft_s > 0:
            self.ttft_ratio += alpha * (ttft / record.slo.ttft_s - self.ttft_ratio)

    def add_refusal(self, record: RequestRecord, alpha: float) -> None:
        """A request its pool could not serve in time, sent to a variant's pool instead."""
        self.reject_share += alpha * (1.0 - self.reject_share)
        self._target(record, alpha)

    def _target(self, record: RequestRecord, alpha: float) -> None:
        target = record.slo.ttft_s
        self.ttft_target_s = (
            target
            if math.isnan(self.ttft_target_s)
            else self.ttft_target_s + alpha * (target - self.ttft_target_s)
        )


@dataclass(slots=True)
class PoolState:
    pool: str
    signals: Signals
    recommendation: Recommendation

    def as_json(self) -> dict[str, Any]:
        signals = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self.signals).items()
        }
        return {"signals": signals, "recommendation": asdict(self.recommendation)}


@dataclass(slots=True)
class Scaler:
    """Gathers each pool's signals once a period and keeps its latest recommendation."""

    fleet: Fleet
    records: RecordLog
    queue_depths: Callable[[], dict[str, int]]
    session: aiohttp.ClientSession
    limits: Thresholds = field(default_factory=Thresholds)
    alpha: float = 0.05  # weight of each finished request in the moving averages
    pools: dict[str, PoolState] = field(default_factory=dict)
    _averages: dict[str, _Averages] = field(default_factory=dict)
    _read: int = 0
    _hooks: set[asyncio.Task[None]] = field(default_factory=set)

    def update(self, config: GatewayConfig, now: float) -> list[PoolState]:
        """Refresh every pool's state; returns those whose recommendation changed."""
        members = pool_members(config.backends)
        pool_of = {name: pool for pool, names in members.items() for name in names}
        fresh, self._read = self.records.since(self._read)
        for record in fresh:
            # A request that reached no backend counts for the pool named after its model.
            pool = pool_of.get(record.backend or "") or (
                record.model if record.model in members else None
            )
            if pool is not None:
                self._averages.setdefault(pool, _Averages()).add(record, self.alpha)
            if record.degraded and record.model in members and record.model != pool:
                # Its own pool would have refused it: pressure there, as a refusal is.
                self._averages.setdefault(record.model, _Averages()).add_refusal(record, self.alpha)
        depths = self.queue_depths()
        changed = []
        for pool, names in members.items():
            signals = self._signals(config, pool, names, depths, now)
            candidate = removal_candidate(
                config.macro_instances.get(pool, ()), bounds_of(config, pool)
            )
            advice = recommend(signals, candidate, self.limits)
            old = self.pools.get(pool)
            state = PoolState(pool, signals, advice)
            if old is None or old.recommendation != advice:
                changed.append(state)
            self.pools[pool] = state
        for pool in set(self.pools) - set(members):
            del self.pools[pool]
        return changed

    def _signals(
        self,
        config: GatewayConfig,
        pool: str,
        names: Iterable[str],
        depths: dict[str, int],
        now: float,
    ) -> Signals:
        wanted = set(names)
        backends = [b for b in self.fleet if b.name in wanted]
        models = {pool} | {m for b in backends for m in b.config.models}
        saved = [
            r.tokens * r.tpot_s - (now - r.first_token_at)
            for b in backends
            for r in b.inflight.values()
            if r.first_token_at is not None and math.isfinite(r.tpot_s)
        ]
        averages = self._averages.get(pool, _Averages())
        target = averages.ttft_target_s
        if math.isnan(target):
            target = min((c.ttft_ms for c in config.slo_classes.values()), default=0.0) / 1000
        return Signals(
            ready=sum(1 for b in backends if b.routable),
            queued=sum(depths.get(m, 0) for m in models),
            ttft_ratio=averages.ttft_ratio,
            reject_share=averages.reject_share,
            ttft_target_s=target,
            saved_tpot_s=sum(saved) / len(saved) if saved else math.nan,
        )

    def notify(self, config: GatewayConfig, changed: list[PoolState]) -> None:
        """Call each changed pool's webhook, in the background."""
        for state in changed:
            url = config.pool(state.pool).webhook_url
            if url is None:
                continue
            task = asyncio.get_running_loop().create_task(self._post(str(url), state))
            self._hooks.add(task)
            task.add_done_callback(self._hooks.discard)

    async def _post(self, url: str, state: PoolState) -> None:
        body = {"pool": state.pool, "at": time.time(), **state.as_json()}
        try:
            async with self.session.post(
                url, json=body, timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                if response.status >= 300:
                    log.warning("scale webhook %s answered %d", url, response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("scale webhook %s failed: %s", url, exc)

    async def run(self, config: Callable[[], GatewayConfig], interval_s: float) -> None:
        while True:
            current = config()
            self.notify(current, self.update(current, time.monotonic()))
            await asyncio.sleep(interval_s)
