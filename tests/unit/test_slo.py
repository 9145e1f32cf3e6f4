from __future__ import annotations

import pytest

from gateway.config import GatewayConfig
from gateway.errors import InvalidRequest
from gateway.slo import SloTarget, resolve_slo

CONFIG = GatewayConfig.model_validate(
    {
        "slo_classes": {
            "interactive": {"ttft_ms": 500, "tpot_ms": 30},
            "batch": {"ttft_ms": 7500, "tpot_ms": 50},
        },
        "default_class": "batch",
        "models": [{"name": "chatty", "default_class": "interactive"}],
    }
)


@pytest.mark.parametrize(
    ("headers", "model", "expected"),
    [
        ({}, "other", SloTarget("batch", 7500, 50)),
        ({}, "chatty", SloTarget("interactive", 500, 30)),
        ({"x-slo-class": "interactive"}, "other", SloTarget("interactive", 500, 30)),
        ({"x-slo-class": " batch "}, "chatty", SloTarget("batch", 7500, 50)),
        ({"x-slo-ttft-ms": "250"}, "other", SloTarget("custom", 250, 50)),
        ({"x-slo-tpot-ms": "12.5"}, "chatty", SloTarget("custom", 500, 12.5)),
        (
            {"x-slo-class": "batch", "x-slo-ttft-ms": "900", "x-slo-tpot-ms": "40"},
            "other",
            SloTarget("custom", 900, 40),
        ),
        # A class the config does not know, with both targets explicit: a label, counted
        # as custom (bounded metric labels); the model's default class decides the rest.
        (
            {"x-slo-class": "s1", "x-slo-ttft-ms": "900", "x-slo-tpot-ms": "40"},
            "chatty",
            SloTarget("custom", 900, 40),
        ),
        # Explicit targets equal to the named class's own: counted under the class.
        (
            {"x-slo-class": "interactive", "x-slo-ttft-ms": "500", "x-slo-tpot-ms": "30"},
            "other",
            SloTarget("interactive", 500, 30),
        ),
        ({"x-slo-class": "batch", "x-slo-ttft-ms": "7500"}, "chatty", SloTarget("batch", 7500, 50)),
        # Without a class header, targets equal to the model's default are still explicit.
        ({"x-slo-ttft-ms": "500", "x-slo-tpot-ms": "30"}, "chatty", SloTarget("custom", 500, 30)),
    ],
)
def test_resolution(headers: dict[str, str], model: str, expected: SloTarget) -> None:
    assert resolve_slo(headers, model, CONFIG) == expected


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-slo-ttft-ms", "abc"),
        ("x-slo-ttft-ms", "0"),
        ("x-slo-ttft-ms", "-5"),
        ("x-slo-ttft-ms", "nan"),
        ("x-slo-ttft-ms", "inf"),
        ("x-slo-ttft-ms", "3600001"),
        ("x-slo-tpot-ms", ""),
        ("x-slo-tpot-ms", "1e9"),
        ("x-slo-class", "gold"),
    ],
)
def test_bad_values_name_the_header(header: str, value: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        resolve_slo({header: value}, "other", CONFIG)
    assert raised.value.param == header
    assert raised.value.status == 400


def test_an_unknown_class_with_one_target_is_still_refused() -> None:
    with pytest.raises(InvalidRequest) as raised:
        resolve_slo({"x-slo-class": "gold", "x-slo-ttft-ms": "500"}, "other", CONFIG)
    assert raised.value.param == "x-slo-class"


def test_seconds() -> None:
    target = SloTarget("x", 500, 30)
    assert (target.ttft_s, target.tpot_s) == (0.5, 0.03)


def test_a_class_may_give_up_its_protection_under_admission_at_arrival() -> None:
    config = GatewayConfig.model_validate(
        {
            "slo_classes": {"loose": {"ttft_ms": 7500, "tpot_ms": 50, "protected": False}},
            "default_class": "loose",
        }
    )
    assert not resolve_slo({}, "m", config).protected
    # Explicit targets keep their base class's protection.
    assert not resolve_slo({"x-slo-ttft-ms": "900"}, "m", config).protected
    assert resolve_slo({"x-slo-class": "interactive"}, "m", CONFIG).protected
