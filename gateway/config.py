"""Dynamic configuration: SLO classes, models and backends.

The models are frozen and forbid unknown fields, so one definition validates a config file, and
later admin input and stored payloads alike. A running gateway swaps a whole snapshot by
reference, so an in-flight request keeps the snapshot it started with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:/@+-]+$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SloClass(_Frozen):
    """A named latency objective: time to first token and time per output token."""

    ttft_ms: float = Field(gt=0, le=3_600_000)
    tpot_ms: float = Field(gt=0, le=600_000)


class ModelConfig(_Frozen):
    name: Name
    default_class: Name | None = None


class BackendConfig(_Frozen):
    name: Name
    url: HttpUrl
    engine: str = "vllm"
    models: tuple[Name, ...] = Field(
        default=(), description="Models served before discovery answers; discovery wins."
    )
    max_in_flight: int = Field(default=256, ge=1, le=100_000)
    weight: float = Field(default=1.0, gt=0)
    api_key: str | None = None

    @property
    def base_url(self) -> str:
        return str(self.url).rstrip("/")


class GatewayConfig(_Frozen):
    slo_classes: dict[Name, SloClass] = Field(
        default_factory=lambda: {"default": SloClass(ttft_ms=2000, tpot_ms=100)}
    )
    default_class: Name = "default"
    models: tuple[ModelConfig, ...] = ()
    backends: tuple[BackendConfig, ...] = ()

    @model_validator(mode="after")
    def _check_references(self) -> Self:
        if self.default_class not in self.slo_classes:
            raise ValueError(f"default_class {self.default_class!r} is not among slo_classes")
        for model in self.models:
            if model.default_class is not None and model.default_class not in self.slo_classes:
                raise ValueError(
                    f"model {model.name!r} names unknown default_class {model.default_class!r}"
                )
        names = [b.name for b in self.backends]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"backend names must be unique: {duplicates}")
        return self

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
