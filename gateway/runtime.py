"""Everything a running gateway holds, built when the app starts and torn down when it stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from adapters.base import Timeouts
from gateway.config import BackendConfig, GatewayConfig, SchedulerConfig
from gateway.fleet import Backend, Fleet, Seat, background, make_adapter
from gateway.keys import KeyRecord, KeyTable
from gateway.learning import SharedLearning
from gateway.limiter import TenantLimiter
from gateway.metrics import GatewayMetrics
from gateway.net import loopback
from gateway.outliers import OutlierRules
from gateway.prefix_index import PrefixIndex
from gateway.proxy import Proxy
from gateway.records import RecordLog
from gateway.scaling import Scaler
from gateway.scheduling.degrade import Pressure, PressureRules
from gateway.scheduling.fairness import FairShare, ShareRules
from gateway.scheduling.macro import instance_ids, with_layout
from gateway.scheduling.policy import Policy, SloPolicy, least_loaded
from gateway.scheduling.scheduler import Scheduler
from gateway.settings import Settings
from gateway.state.load import LoadTotals
from gateway.state.memory import MemoryStore
from gateway.state.redis_store import RedisStore
from gateway.state.sharing import LoadSharing
from gateway.state.store import StaleVersion, Store, StoreUnavailable
from gateway.tokens import TokenScales
from predictor import artifact
from predictor.model import LengthModel
from predictor.online import SampleLog


@dataclass(slots=True)
class Services:
    session: aiohttp.ClientSession
    fleet: Fleet
    scheduler: Scheduler[Seat]
    metrics: GatewayMetrics
    records: RecordLog
    proxy: Proxy
    lengths: LengthModel
    samples: SampleLog
    lengths_version: str = "packaged"
    store: Store | None = None
    config_version: int = 0
    learning: SharedLearning | None = None  # with replicas: samples and models shared
    scaler: Scaler | None = None
    limiter: TenantLimiter = field(default_factory=lambda: TenantLimiter(None))
    tokens: TokenScales = field(default_factory=TokenScales)


log = logging.getLogger(__name__)


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
        rolling=config.placement == "rolling",
        commit=config.admission == "arrival",
        overrun=config.overrun_share,
        stretch=config.stretch_by_error,
        prefix_weight=config.prefix_weight,
        session_weight=config.session_weight,
        adapter_weight=config.adapter_weight if config.adapter_aware else 0.0,
    )


def fair_share(config: GatewayConfig, current: FairShare | None = None) -> FairShare | None:
    """The scheduler's fair share under ``config``; the counters so far carry over."""
    rules = config.scheduler.fair_share
    if not rules.enabled:
        return None
    share = current or FairShare(ShareRules())
    share.rules = ShareRules(
        rules.half_life_s,
        rules.tolerance,
        rules.slack_tokens,
        rules.prefill_weight,
        rules.decode_weight,
        rules.reserve_slots,
        rules.active_s,
    )
    share.weight = config.tenant_weight
    return share


def pressure(config: GatewayConfig, current: Pressure | None = None) -> Pressure | None:
    """The scheduler's degrade pressure under ``config`` (None when no model has variants);
    the shares so far carry over."""
    if not any(model.variants for model in config.models):
        return None
    rules = config.scheduler.degrade
    kept = current or Pressure()
    kept.rules = PressureRules(
        rules.enter_share, rules.leave_share, rules.half_life_s, rules.min_dwell_s
    )
    return kept


def prefix_index(config: GatewayConfig, current: PrefixIndex | None = None) -> PrefixIndex | None:
    """The scheduler's prefix index under ``config``; what it knows carries over."""
    if not config.scheduler.prefix_aware:
        return None
    return current or PrefixIndex()


class Runtime:
    """Holds the settings, the current config snapshot and, once started, the services."""

    def __init__(self, settings: Settings, config: GatewayConfig) -> None:
        self.settings = settings
        self.config = config
        self._services: Services | None = None
        self.retraining = asyncio.Lock()
        self.draining = False  # shutting down: /ready fails, in-flight requests finish
        self.keys = KeyTable()  # client keys, mirrored from the store

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
        store: Store = (
            RedisStore(s.redis_url, prefix=s.redis_prefix, call_timeout_s=s.redis_timeout_s)
            if s.redis_url
            else MemoryStore()
        )
        self.config = with_layout(self.config)
        self.config, version = await self._shared_config(store)
        self.config = with_layout(self.config)
        await self.refresh_keys(store)
        self._announce_access()
        connector = aiohttp.TCPConnector(limit=s.upstream_pool_size, limit_per_host=0)
        session = aiohttp.ClientSession(connector=connector)
        backends = [self._build_backend(session, cfg) for cfg in self.config.backends]
        fleet = Fleet(
            backends,
            unhealthy_after=s.unhealthy_after,
            probe_timeout_s=s.probe_timeout_s,
            outliers=OutlierRules(s.eject_after, s.eject_base_s, s.eject_max_s),
        )
        # The in-process store serves one replica: its local accounting is already exact.
        sharing = LoadSharing(store, ttl_s=s.shared_lease_ttl_s) if s.redis_url else None
        scheduler = Scheduler(
            fleet,
            make_policy(self.config.scheduler),
            clock=time.monotonic,
            peer_load=sharing.others if sharing is not None else lambda _name: LoadTotals(),
        )
        scheduler.instances = instance_ids(self.config)
        scheduler.fair = fair_share(self.config)
        scheduler.prefix = prefix_index(self.config)
        scheduler.pressure = pressure(self.config)
        fleet.adapters.config = self.config.adapters
        fleet.adapters.aware = self.config.scheduler.adapter_aware
        fleet.on_change = scheduler.schedule
        metrics = GatewayMetrics(fleet, scheduler.queue_depths)
        metrics.watch_config(lambda: self.config)
        if isinstance(store, RedisStore):
            metrics.watch_breaker(store.breaker)
        records = RecordLog(s.records_kept)
        scaler = Scaler(fleet, records, scheduler.queue_depths, session)
        metrics.watch_pools(
            lambda: scaler.pools,
            lambda: {pool: len(groups) for pool, groups in self.config.macro_instances.items()},
        )
        samples = SampleLog(s.samples_kept)
        proxy = Proxy(
            fleet,
            scheduler,
            metrics,
            records,
            samples,
            timeouts=self.timeouts(),
            queue_timeout_s=s.queue_timeout_s,
            send_timeout_s=s.send_timeout_s,
            sharing=sharing,
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
            store,
            version,
            SharedLearning(store, samples, keep=s.samples_kept) if s.redis_url else None,
            scaler,
            TenantLimiter(store if isinstance(store, RedisStore) else None),
        )
        limiter = self._services.limiter
        metrics.watch_tenants(lambda: self.config, limiter, lambda: scheduler.fair, time.monotonic)
        await fleet.probe_all()
        tick_s = self.config.scheduler.tick_ms / 1000
        tasks = [
            asyncio.create_task(background("probes", lambda: fleet.run_probes(s.probe_interval_s))),
            asyncio.create_task(background("ticks", lambda: scheduler.run_ticks(tick_s))),
            asyncio.create_task(background("config", self._watch_config)),
            asyncio.create_task(
                background("scaling", lambda: scaler.run(lambda: self.config, s.scale_interval_s))
            ),
            asyncio.create_task(background("rate limits", limiter.run)),
            asyncio.create_task(
                background(
                    "token scales",
                    lambda: self.services.tokens.run(fleet, s.probe_interval_s),
                )
            ),
        ]
        learning = self._services.learning
        if learning is not None:
            tasks.append(
                asyncio.create_task(
                    background(
                        "learning",
                        lambda: learning.run(
                            lambda: self.services.lengths_version,
                            self.swap_lengths,
                            s.learning_sync_s,
                        ),
                    )
                )
            )
        if sharing is not None:

            def names() -> list[str]:
                return [b.name for b in fleet]

            tasks.append(
                asyncio.create_task(
                    background(
                        "shared load",
                        lambda: sharing.run(names, s.shared_sync_s, scheduler.schedule),
                    )
                )
            )
        try:
            yield
        finally:
            if sharing is not None:
                await sharing.close(s.shutdown_grace_s)
            await limiter.close()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await session.close()
            await store.close()
            self._services = None

    def _build_backend(self, session: aiohttp.ClientSession, config: BackendConfig) -> Backend:
        return Backend.create(config, make_adapter(session, config), self.config.latency_prior)

    async def _shared_config(self, store: Store) -> tuple[GatewayConfig, int]:
        """The config in the store; the file's seeds an empty store. With the store away,
        the file's config serves until it is back."""
        try:
            current = await store.get_config()
            if current is None:
                try:
                    return self.config, await store.put_config(
                        self.config.model_dump_json(), expected_version=0
                    )
                except StaleVersion:  # another replica seeded it first
                    current = await store.get_config()
            if current is not None:
                return GatewayConfig.model_validate_json(current.payload), current.version
        except StoreUnavailable as exc:
            log.warning("shared state unreachable, serving the file's config: %s", exc)
        return self.config, 0

    async def refresh_keys(self, store: Store) -> None:
        """Mirror the store's client keys; with the store away, keep the last copy."""
        try:
            found = await store.get_keys()
        except StoreUnavailable:
            return
        records = {}
        for key_id, text in found.items():
            try:
                records[key_id] = KeyRecord.from_json(text)
            except (ValueError, KeyError, TypeError):
                log.error("client key record %s in the store is invalid; ignored", key_id)
        self.keys.replace_all(records)

    def _announce_access(self) -> None:
        s = self.settings
        if s.open_access and not loopback(s.host):
            log.warning(
                "SLUICE_OPEN_ACCESS: /v1 is served on %s to anyone while no client key exists",
                s.host,
            )

    def swap_lengths(self, loaded: artifact.Artifact) -> None:
        self.services.lengths = loaded.model
        self.services.lengths_version = loaded.version

    def apply(self, config: GatewayConfig, version: int) -> None:
        """Swap in a config snapshot: requests in flight keep the one they started with."""
        services = self.services
        self.config = config = with_layout(config)
        services.config_version = version
        services.scheduler.policy = make_policy(config.scheduler)
        services.scheduler.instances = instance_ids(config)
        services.scheduler.fair = fair_share(config, services.scheduler.fair)
        services.scheduler.prefix = prefix_index(config, services.scheduler.prefix)
        services.scheduler.pressure = pressure(config, services.scheduler.pressure)
        services.fleet.adapters.config = config.adapters
        services.fleet.adapters.aware = config.scheduler.adapter_aware
        added = services.fleet.reconcile(
            config.backends, lambda cfg: self._build_backend(services.session, cfg)
        )
        for backend in added:
            asyncio.get_running_loop().create_task(services.fleet.probe(backend))
        log.info("config version %d applied", version)

    async def _watch_config(self) -> None:
        """Pick up changes: announced on pub/sub, and polled, as announcements can be lost."""
        while True:
            services = self.services
            store = services.store
            assert store is not None
            await store.wait_for_change(self.settings.config_poll_s)
            await self.refresh_keys(store)
            try:
                current = await store.get_config()
                if current is None:
                    # The store came back empty (restarted without persistence): give it
                    # the snapshot this replica serves, unless another replica got there first.
                    with contextlib.suppress(StaleVersion):
                        version = await store.put_config(
                            self.config.model_dump_json(), expected_version=0
                        )
                        self.apply(self.config, version)
                    continue
            except StoreUnavailable:
                continue
            # Reachable, the store is the truth: any version other than ours is adopted.
            if current.version != services.config_version:
                try:
                    config = GatewayConfig.model_validate_json(current.payload)
                except ValueError:
                    log.exception("config version %d in the store is invalid", current.version)
                    continue
                self.apply(config, current.version)
