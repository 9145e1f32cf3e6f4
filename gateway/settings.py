"""Process settings, read once at start from the environment (``SLUICE_*``) and the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything that is fixed for the life of one gateway process."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_", frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    config: Path | None = None

    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A request's headers must arrive within this of its first byte.",
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="A request's body must arrive within this."
    )
    keepalive_timeout_s: float = Field(
        default=75.0, gt=0, description="An idle client connection is closed after this."
    )
    send_timeout_s: float = Field(
        default=30.0, gt=0, description="A client must take each streamed chunk within this."
    )
    max_connections: int = Field(
        default=4096, ge=1, description="Client connections held at once; more get a 503."
    )
    redis_timeout_s: float = Field(
        default=0.25,
        gt=0,
        description="A Redis call slower than this opens the circuit breaker: local accounting.",
    )
    shutdown_delay_s: float = Field(
        default=0.0,
        ge=0,
        description="On SIGTERM, /ready fails this long before the listener closes.",
    )
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM, in-flight requests get this long to finish."
    )
    eject_after: int = Field(
        default=3, ge=1, description="Consecutive failed responses that eject a backend."
    )
    eject_base_s: float = Field(
        default=10.0, gt=0, description="First ejection's length; each repeat adds as much."
    )
    eject_max_s: float = Field(default=300.0, gt=0, description="Longest ejection.")
    connect_timeout_s: float = Field(default=2.0, gt=0)
    first_byte_timeout_s: float = Field(
        default=60.0, gt=0, description="Upstream response headers must arrive within this."
    )
    idle_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest silence allowed between two upstream chunks."
    )
    queue_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest a request waits in the gateway queue for a slot."
    )
    probe_interval_s: float = Field(default=2.0, gt=0)
    probe_timeout_s: float = Field(default=2.0, gt=0)
    unhealthy_after: int = Field(
        default=2, ge=1, description="Consecutive failed probes that mark a backend unhealthy."
    )
    upstream_pool_size: int = Field(default=1024, ge=1)
    records_kept: int = Field(default=10_000, ge=0)
    predictor_artifact: Path | None = Field(
        default=None, description="Length-model manifest; the packaged model when unset."
    )
    log_level: str = "INFO"
    samples_kept: int = Field(
        default=20_000, ge=0, description="Completed requests kept for predictor retraining."
    )
    predictor_base_data: Path | None = Field(
        default=None, description="ShareGPT-format data blended into a retrain."
    )
    redis_url: str | None = Field(
        default=None, description="Shared state for several replicas; embedded store if unset."
    )
    redis_prefix: str = "sluice"
    shared_lease_ttl_s: float = Field(
        default=10.0, gt=0, description="A lease of a replica that died lapses after this."
    )
    shared_sync_s: float = Field(
        default=0.2, gt=0, description="How often a replica renews its leases and reads others'."
    )
    learning_sync_s: float = Field(
        default=1.0, gt=0, description="How often samples are shared and shared models looked for."
    )
    scale_interval_s: float = Field(
        default=1.0, gt=0, description="How often each pool's scale recommendation is refreshed."
    )
    config_poll_s: float = Field(default=0.5, gt=0, description="Longest a config change waits.")
    open_access: bool = Field(
        default=False,
        description="Serve /v1 beyond loopback while no client key exists (logged at start).",
    )
    admin_token: str | None = Field(
        default=None,
        description="Bearer token for /admin. Without one, /admin answers only on loopback.",
    )

    @model_validator(mode="after")
    def _leases_outlive_syncs(self) -> Self:
        if self.shared_lease_ttl_s < 5 * self.shared_sync_s:
            raise ValueError(
                "shared_lease_ttl_s must be at least 5 x shared_sync_s, or live leases lapse"
            )
        return self
