"""Per-request latency objectives from the ``x-slo-*`` headers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from gateway.config import DEGRADE_ORDER, Degrade, GatewayConfig
from gateway.errors import InvalidRequest

TTFT_HEADER = "x-slo-ttft-ms"
TPOT_HEADER = "x-slo-tpot-ms"
CLASS_HEADER = "x-slo-class"
SLO_HEADERS = (TTFT_HEADER, TPOT_HEADER, CLASS_HEADER)
CUSTOM_CLASS = "custom"

_MAX_TTFT_MS = 3_600_000.0
_MAX_TPOT_MS = 600_000.0


@dataclass(frozen=True, slots=True)
class SloTarget:
    """What one request asks for. ``class_name`` is ``custom`` when a header overrides a target."""

    class_name: str
    ttft_ms: float
    tpot_ms: float
    rejectable: bool = True
    protected: bool = True  # admitted at arrival, later tighter requests may not push it out
    degrade: Degrade = "never"  # whether a variant of its model may serve it

    def capped(self, limit: Degrade | None) -> SloTarget:
        """The same objective, degraded no further than ``limit`` allows."""
        if limit is None or DEGRADE_ORDER[limit] >= DEGRADE_ORDER[self.degrade]:
            return self
        return replace(self, degrade=limit)

    @property
    def ttft_s(self) -> float:
        return self.ttft_ms / 1000.0

    @property
    def tpot_s(self) -> float:
        return self.tpot_ms / 1000.0


def _parse_ms(headers: Mapping[str, str], name: str, upper: float) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or value > upper:
        raise InvalidRequest(
            f"header {name} must be a number of milliseconds in (0, {upper:.0f}], got {raw!r}",
            param=name,
        )
    return value


def resolve_slo(
    headers: Mapping[str, str],
    model: str,
    config: GatewayConfig,
    default_class: str | None = None,
) -> SloTarget:
    """The request's objective: its class (or the model's default), then explicit overrides.

    With both targets explicit, a class name the config does not know is only a label (load
    generators name their classes): it is accepted and counted as ``custom``, so that metric
    labels stay bounded. Targets that equal the class's own count under the class."""
    ttft = _parse_ms(headers, TTFT_HEADER, _MAX_TTFT_MS)
    tpot = _parse_ms(headers, TPOT_HEADER, _MAX_TPOT_MS)
    class_name = headers.get(CLASS_HEADER)
    if class_name is not None:
        class_name = class_name.strip()
        if class_name not in config.slo_classes:
            if ttft is None or tpot is None:
                known = ", ".join(sorted(config.slo_classes))
                raise InvalidRequest(
                    f"unknown SLO class {class_name!r} in header {CLASS_HEADER}; known: "
                    f"{known} (or send both {TTFT_HEADER} and {TPOT_HEADER})",
                    param=CLASS_HEADER,
                )
            class_name = None  # a label only: the model's default class decides the rest
    fallback = default_class or config.class_for_model(model)
    base_name = class_name if class_name is not None else fallback
    base = config.slo_classes[base_name]
    rejectable = base.on_unattainable == "reject"
    ttft_ms = base.ttft_ms if ttft is None else ttft
    tpot_ms = base.tpot_ms if tpot is None else tpot
    same = (ttft_ms, tpot_ms) == (base.ttft_ms, base.tpot_ms)
    explicit = ttft is not None or tpot is not None
    # Targets given without a class are custom, even where they equal the default class's.
    label = base_name if same and (class_name is not None or not explicit) else CUSTOM_CLASS
    return SloTarget(label, ttft_ms, tpot_ms, rejectable, base.protected, base.degrade)
