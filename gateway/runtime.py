"""Everything a running gateway holds, built when the app starts and torn down when it stops."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from adapters.base import Timeouts
from gateway.config import GatewayConfig, SchedulerConfig
from gateway.fleet import Backend, Fleet, background, make_adapter
from gateway.metrics import GatewayMetrics
from gateway.proxy import Proxy
from gateway.records import RecordLog
from gateway.scheduling.policy import Policy, SloPolicy, least_loaded
from gateway.scheduling.scheduler import Scheduler
from gateway.settings import Settings
from predictor import artifact
from predictor.model import LengthModel
from predictor.online import SampleLog


@dataclass(slots=True)
class Services:
    session: aiohttp.ClientSession
    fleet: Fleet
    scheduler: Scheduler
    metrics: GatewayMetrics
    records: RecordLog
    proxy: Proxy
    lengths: LengthModel
    samples: SampleLog
    lengths_version: str = "packaged"


def make_policy(config: SchedulerConfig) -> Policy:
    if config.policy == "least_loaded":
        return least_loaded
    return SloPolicy(
        ldf=config.ldf,
        reject=config.reject,
        vbs=config.vbs,
        credits=config.credits,
        margin_s=config.margin_ms / 1000,
        epsilon=config.epsilon,
        admit_margin=config.admit_margin,
        urgent_s=config.urgent_ms / 1000,
    )


class Runtime:
    """Holds the settings, the current config snapshot and, once started, the services."""

    def __init__(self, settings: Settings, config: GatewayConfig) -> None:
        self.settings = settings
        self.config = config
        self._services: Services | None = None
        self.retraining = asyncio.Lock()

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("the gateway has not started")
        return self._services

    def timeouts(self) -> Timeouts:
        s = self.settings
        return Timeouts(s.connect_timeout_s, s.first_byte_timeout_s, s.idle_timeout_s)

    async def lifespan(self, _app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: start the services, yield while serving, then stop them."""
        s = self.settings
        loaded = await asyncio.to_thread(artifact.load, s.predictor_artifact or artifact.PACKAGED)
        connector = aiohttp.TCPConnector(limit=s.upstream_pool_size, limit_per_host=0)
        session = aiohttp.ClientSession(connector=connector)
        backends = [
            Backend.create(cfg, make_adapter(session, cfg), self.config.latency_prior)
            for cfg in self.config.backends
        ]
        fleet = Fleet(
            backends, unhealthy_after=s.unhealthy_after, probe_timeout_s=s.probe_timeout_s
        )
        scheduler = Scheduler(fleet, make_policy(self.config.scheduler), clock=time.monotonic)
        fleet.on_change = scheduler.schedule
        metrics = GatewayMetrics(fleet, scheduler.queue_depths)
        records = RecordLog(s.records_kept)
        samples = SampleLog(s.samples_kept)
        proxy = Proxy(
            fleet,
            scheduler,
            metrics,
            records,
            samples,
            timeouts=self.timeouts(),
            queue_timeout_s=s.queue_timeout_s,
        )
        self._services = Services(
            session,
            fleet,
            scheduler,
            metrics,
            records,
            proxy,
            loaded.model,
            samples,
            loaded.version,
        )
        await fleet.probe_all()
        tick_s = self.config.scheduler.tick_ms / 1000
        tasks = [
            asyncio.create_task(background("probes", lambda: fleet.run_probes(s.probe_interval_s))),
            asyncio.create_task(background("ticks", lambda: scheduler.run_ticks(tick_s))),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await session.close()
            self._services = None
