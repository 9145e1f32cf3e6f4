from __future__ import annotations

import pytest

from gateway.records import RequestRecord
from gateway.slo import SloTarget

SLO = SloTarget("c", ttft_ms=500, tpot_ms=50)


def record(**fields: object) -> RequestRecord:
    base = RequestRecord(
        id="r",
        model="m",
        endpoint="/v1/completions",
        slo=SLO,
        stream=True,
        arrival=100.0,
        outcome="ok",
    )
    for key, value in fields.items():
        setattr(base, key, value)
    return base


def test_streamed_timings() -> None:
    r = record(first_token=100.4, token_times=[100.4, 100.44, 100.48, 100.52], finish=100.6)
    assert r.ttft_s == pytest.approx(0.4)
    assert r.tpot_s == pytest.approx(0.04)
    assert r.met_slo


@pytest.mark.parametrize(
    ("first", "times", "outcome", "good"),
    [
        (100.6, [100.6, 100.62], "ok", False),  # TTFT over
        (100.1, [100.1, 100.2, 100.3], "ok", False),  # TPOT 100 ms over
        (100.1, [100.1], "ok", True),  # one token: TPOT undefined, TTFT decides
        (100.1, [100.1, 100.12], "failed", False),
    ],
)
def test_met_slo(first: float, times: list[float], outcome: str, good: bool) -> None:
    assert record(first_token=first, token_times=times, outcome=outcome).met_slo is good


def test_usage_count_wins_over_chunks() -> None:
    r = record(first_token=100.1, token_times=[100.1, 100.3], completion_tokens=5)
    assert r.tokens == 5
    assert r.tpot_s == pytest.approx(0.05)


@pytest.mark.parametrize(("finish", "good"), [(100.69, True), (100.71, False)])
def test_non_streamed_judged_by_last_token_due(finish: float, good: bool) -> None:
    # Due at 0.5 s + 4 further tokens x 50 ms = 0.7 s.
    r = record(stream=False, completion_tokens=5, finish=finish)
    assert r.ttft_s is None
    assert r.met_slo is good
