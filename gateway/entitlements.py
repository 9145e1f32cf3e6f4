"""What a tenant may ask for (``tenants`` in the config): its models, the SLO classes it may
name, the tightest targets, its default class. A request asking for more is refused with 403
(``model_not_permitted``, ``slo_not_permitted``, naming the field or header), or clamped to
the entitlement where the tenant is so configured. Pure functions of the request's resolved
objective and the tenant's entry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from gateway.config import GatewayConfig, TenantConfig
from gateway.errors import ModelNotPermitted, SloNotPermitted
from gateway.slo import CLASS_HEADER, CUSTOM_CLASS, TPOT_HEADER, TTFT_HEADER, SloTarget, resolve_slo


def entitled(config: GatewayConfig, tenant: str | None) -> tuple[str, TenantConfig] | None:
    """The tenant and its entry, when the request has a tenant with an entry."""
    entitlement = config.tenants.get(tenant) if tenant is not None else None
    return None if tenant is None or entitlement is None else (tenant, entitlement)


def check_model(tenant: str, entitlement: TenantConfig, model: str) -> None:
    if entitlement.models is not None and model not in entitlement.models:
        raise ModelNotPermitted(f"tenant {tenant!r} may not use the model {model!r}", param="model")


def tenant_slo(
    headers: Mapping[str, str],
    model: str,
    config: GatewayConfig,
    tenant: str,
    entitlement: TenantConfig,
) -> SloTarget:
    """The request's objective within what the tenant may ask for."""
    clamp = entitlement.on_excess == "clamp"
    named = (headers.get(CLASS_HEADER) or "").strip()
    allowed = entitlement.classes
    # A name the config does not know is a label only (gateway.slo): not a class asked for.
    if named in config.slo_classes and allowed is not None and named not in allowed:
        if not clamp:
            raise SloNotPermitted(
                f"tenant {tenant!r} may not use the SLO class {named!r}; its classes: "
                f"{', '.join(allowed)}",
                param=CLASS_HEADER,
            )
        # Header names are case-insensitive: the copy keeps them lower case, as they are read.
        headers = {k.lower(): v for k, v in headers.items() if k.lower() != CLASS_HEADER}
    slo = resolve_slo(headers, model, config, default_class=entitlement.default_class)
    slo = slo.capped(entitlement.degrade)
    ttft, tpot = slo.ttft_ms, slo.tpot_ms
    for value, floor, header in (
        (ttft, entitlement.min_ttft_ms, TTFT_HEADER),
        (tpot, entitlement.min_tpot_ms, TPOT_HEADER),
    ):
        if floor is not None and value < floor and not clamp:
            param = header if header in headers else CLASS_HEADER
            raise SloNotPermitted(
                f"tenant {tenant!r} may ask for {header.removeprefix('x-slo-')} of "
                f"{floor:g} ms at the tightest; this request asks for {value:g} ms",
                param=param,
            )
    ttft = max(ttft, entitlement.min_ttft_ms or 0.0)
    tpot = max(tpot, entitlement.min_tpot_ms or 0.0)
    if (ttft, tpot) == (slo.ttft_ms, slo.tpot_ms):
        return slo
    return replace(slo, class_name=CUSTOM_CLASS, ttft_ms=ttft, tpot_ms=tpot)
