"""Fair share between tenants: decayed weighted service counters and the ranks from them."""

from __future__ import annotations

import pytest

from gateway.scheduling.fairness import FairShare, ShareRules

RULES = ShareRules(half_life_s=10.0, tolerance=0.1, slack_tokens=100.0, prefill=1.0, decode=2.0)


def test_service_weighs_prefill_and_decode_and_divides_by_weight() -> None:
    share = FairShare(RULES, weight=lambda tenant: 2.0 if tenant == "big" else 1.0)
    share.charge("small", 100, 50, now=0.0)
    share.charge("big", 100, 50, now=0.0)
    assert share.service("small", 0.0) == pytest.approx(200.0)
    assert share.service("big", 0.0) == pytest.approx(100.0)
    assert share.service("unknown", 0.0) == 0.0


def test_service_decays_by_half_life_and_corrections_apply() -> None:
    share = FairShare(RULES)
    share.charge("t", 1000, 0, now=0.0)
    assert share.service("t", 10.0) == pytest.approx(500.0)
    assert share.service("t", 20.0) == pytest.approx(250.0)
    share.charge("t", 0, -100, now=20.0)  # it generated 100 tokens fewer than predicted
    assert share.service("t", 20.0) == pytest.approx(50.0)
    share.charge("t", -1000, 0, now=20.0)  # never below zero, and then forgotten
    assert share.service("t", 20.0) == 0.0
    assert share.tenants() == []


def test_ranks_group_tenants_within_the_tolerance() -> None:
    share = FairShare(RULES)
    for tenant, tokens in (("a", 1000), ("b", 1150), ("c", 1300), ("d", 5000)):
        share.charge(tenant, tokens, 0, now=0.0)
    # b is within 10% + 100 of a; c is not (1300 > 1000*1.1 + 100); d is far above c.
    assert share.ranks(["a", "b", "c", "d", None], 0.0) == {
        None: 0,
        "a": 1,
        "b": 1,
        "c": 2,
        "d": 3,
    }
    assert share.ranks(["c", "d"], 0.0) == {"c": 0, "d": 1}


def test_a_heavier_tenant_ranks_with_one_served_half_as_much() -> None:
    share = FairShare(RULES, weight=lambda tenant: 2.0 if tenant == "heavy" else 1.0)
    share.charge("heavy", 2000, 0, now=0.0)
    share.charge("light", 1000, 0, now=0.0)
    assert share.ranks(["heavy", "light"], 0.0) == {"heavy": 0, "light": 0}
