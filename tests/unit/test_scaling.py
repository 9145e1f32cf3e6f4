"""Scale recommendations from a pool's signals, at each rule's boundary."""

from __future__ import annotations

import math

import pytest

from gateway.scaling import Recommendation, Signals, Thresholds, recommend

LIMITS = Thresholds(reject_share=0.05, cold_start_per_backend=10)


def signals(**changes: float) -> Signals:
    base = {
        "ready": 2,
        "queued": 0,
        "ttft_ratio": 0.5,
        "reject_share": 0.0,
        "ttft_target_s": 1.0,
        "saved_tpot_s": 1.0,
    }
    base.update(changes)
    return Signals(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "action", "backends"),
    [
        ({}, "hold", 0),
        # Cold start: scale out in proportion to the requests waiting.
        ({"ready": 0, "queued": 0}, "hold", 0),
        ({"ready": 0, "queued": 1}, "scale_out", 1),
        ({"ready": 0, "queued": 10}, "scale_out", 1),
        ({"ready": 0, "queued": 11}, "scale_out", 2),
        # Moving-average TTFT above its target.
        ({"ttft_ratio": 1.0}, "hold", 0),
        ({"ttft_ratio": 1.01}, "scale_out", 1),
        # Rejections for TTFT above the tolerated share.
        ({"reject_share": 0.05}, "hold", 0),
        ({"reject_share": 0.051}, "scale_out", 1),
        # Saved TPOT above T_TTFT * (n + 1) / n: with n = 2 and 1 s, above 1.5 s.
        ({"saved_tpot_s": 1.5}, "hold", 0),
        ({"saved_tpot_s": 1.51}, "scale_in", -1),
        ({"saved_tpot_s": 1.51, "ready": 4}, "scale_in", -1),  # 1.25 s with n = 4
        ({"saved_tpot_s": 1.2, "ready": 4}, "hold", 0),
        # Never below one backend, never with work waiting or lately rejected.
        ({"saved_tpot_s": 9.0, "ready": 1}, "hold", 0),
        ({"saved_tpot_s": 9.0, "queued": 1}, "hold", 0),
        ({"saved_tpot_s": 9.0, "reject_share": 0.01}, "hold", 0),
        ({"saved_tpot_s": math.nan}, "hold", 0),
        # Scale-out wins over scale-in.
        ({"saved_tpot_s": 9.0, "ttft_ratio": 1.5}, "scale_out", 1),
    ],
)
def test_recommend(changes: dict[str, float], action: str, backends: int) -> None:
    advice = recommend(signals(**changes), "b9", LIMITS)
    assert (advice.action, advice.backends) == (action, backends)
    assert advice.candidate == ("b9" if action == "scale_in" else None)
    assert advice.reason


def test_recommendations_compare_by_value() -> None:
    assert recommend(signals(), None, LIMITS) == Recommendation("hold", 0, "within targets")
