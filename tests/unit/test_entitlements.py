"""Tenants' entitlements at their boundaries, table-driven."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict

from gateway.config import GatewayConfig, TenantConfig
from gateway.entitlements import check_model, tenant_slo
from gateway.errors import ModelNotPermitted, SloNotPermitted
from gateway.slo import SloTarget

CONFIG = GatewayConfig.model_validate(
    {
        "slo_classes": {
            "gold": {"ttft_ms": 300, "tpot_ms": 20},
            "silver": {"ttft_ms": 1000, "tpot_ms": 40},
            "bronze": {"ttft_ms": 5000, "tpot_ms": 80},
        },
        "default_class": "gold",
    }
)
LIMITED: dict[str, Any] = {
    "classes": ["silver", "bronze"],
    "min_ttft_ms": 800,
    "min_tpot_ms": 30,
    "default_class": "silver",
}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, SloTarget("silver", 1000, 40)),  # its own default, not the global gold
        ({"x-slo-class": "bronze"}, SloTarget("bronze", 5000, 80)),
        ({"x-slo-ttft-ms": "800", "x-slo-tpot-ms": "30"}, SloTarget("custom", 800, 30)),
        # A label the config does not know, with both targets at the floors: allowed.
        ({"x-slo-class": "s1", "x-slo-ttft-ms": "900", "x-slo-tpot-ms": "35"},
         SloTarget("custom", 900, 35)),
    ],
)  # fmt: skip
def test_within_the_entitlement(headers: dict[str, str], expected: SloTarget) -> None:
    tenant = TenantConfig.model_validate(LIMITED)
    assert tenant_slo(headers, "m", CONFIG, "acme", tenant) == expected


@pytest.mark.parametrize(
    ("headers", "param"),
    [
        ({"x-slo-class": "gold"}, "x-slo-class"),
        ({"x-slo-ttft-ms": "799"}, "x-slo-ttft-ms"),
        ({"x-slo-tpot-ms": "29.9"}, "x-slo-tpot-ms"),
        ({"x-slo-class": "s1", "x-slo-ttft-ms": "100", "x-slo-tpot-ms": "50"}, "x-slo-ttft-ms"),
    ],
)
def test_asking_for_more_is_refused_naming_the_header(headers: dict[str, str], param: str) -> None:
    tenant = TenantConfig.model_validate(LIMITED)
    with pytest.raises(SloNotPermitted) as refused:
        tenant_slo(headers, "m", CONFIG, "acme", tenant)
    assert (refused.value.status, refused.value.param) == (403, param)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-slo-class": "gold"}, SloTarget("silver", 1000, 40)),  # to its default class
        ({"x-slo-ttft-ms": "100"}, SloTarget("custom", 800, 40)),
        ({"x-slo-ttft-ms": "100", "x-slo-tpot-ms": "5"}, SloTarget("custom", 800, 30)),
        ({"x-slo-ttft-ms": "2000"}, SloTarget("custom", 2000, 40)),  # looser is left alone
    ],
)
def test_clamped_where_the_tenant_is_so_configured(
    headers: dict[str, str], expected: SloTarget
) -> None:
    tenant = TenantConfig.model_validate({**LIMITED, "on_excess": "clamp"})
    assert tenant_slo(headers, "m", CONFIG, "acme", tenant) == expected


def test_a_clamped_class_keeps_the_other_headers_whatever_their_case() -> None:
    tenant = TenantConfig.model_validate({**LIMITED, "on_excess": "clamp"})
    headers = CIMultiDict({"X-SLO-Class": "gold", "X-SLO-TTFT-MS": "2000"})
    assert tenant_slo(headers, "m", CONFIG, "acme", tenant) == SloTarget("custom", 2000, 40)


def test_models() -> None:
    tenant = TenantConfig(models=("m",))
    check_model("acme", tenant, "m")
    with pytest.raises(ModelNotPermitted) as refused:
        check_model("acme", tenant, "other")
    assert (refused.value.status, refused.value.param) == (403, "model")
    check_model("acme", TenantConfig(), "anything")


@pytest.mark.parametrize(
    "tenant",
    [{"classes": ["platinum"]}, {"default_class": "platinum"},
     {"classes": ["bronze"], "default_class": "silver"}],
)  # fmt: skip
def test_entitlements_must_name_known_classes(tenant: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="tenant 'acme'"):
        GatewayConfig.model_validate({**CONFIG.model_dump(), "tenants": {"acme": tenant}})


@pytest.mark.parametrize(
    ("class_degrade", "tenant_degrade", "expected"),
    [
        ("prefer_fast", None, "prefer_fast"),  # unset: the class decides
        ("prefer_fast", "when_unattainable", "when_unattainable"),  # the stricter applies
        ("when_unattainable", "never", "never"),
        ("never", "prefer_fast", "never"),  # a tenant cannot loosen its class
        ("when_unattainable", "prefer_fast", "when_unattainable"),
    ],
)
def test_a_tenant_caps_how_far_its_requests_are_degraded(
    class_degrade: str, tenant_degrade: str | None, expected: str
) -> None:
    config = GatewayConfig.model_validate(
        {"slo_classes": {"c": {"ttft_ms": 500, "tpot_ms": 50, "degrade": class_degrade}}}
        | {"default_class": "c"}
    )
    entry = TenantConfig.model_validate({"degrade": tenant_degrade})
    assert tenant_slo(CIMultiDict(), "m", config, "t", entry).degrade == expected
