"""The rate limiter's answers: OpenAI's reset durations, refusals and their headers."""

from __future__ import annotations

import pytest

from gateway.limiter import duration, rate_headers, refusal
from gateway.quota import QuotaAsk, QuotaState


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0ms"), (0.0201, "21ms"), (1.5, "1.5s"), (17.496, "17.496s"), (360.0, "6m0s")],
)
def test_reset_durations_read_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_headers_name_only_the_limits_set() -> None:
    state = QuotaState(True, requests_remaining=4, requests_reset_s=0.25)
    headers = rate_headers(QuotaAsk(5.0, None, 3, 10, 10), state)
    assert headers == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "250ms",
    }
    owing = QuotaState(True, tokens_remaining=-40, tokens_reset_s=61.0)
    assert rate_headers(QuotaAsk(None, 600, None, 1, 1), owing)["x-ratelimit-remaining-tokens"] == (
        "0"
    )


def test_a_refusal_carries_its_wait_and_the_buckets() -> None:
    ask = QuotaAsk(None, 600, None, 100, 300)
    state = QuotaState(False, "tokens", 2.2, tokens_remaining=80, tokens_reset_s=52.0)
    error = refusal("acme", ask, state)
    assert error.status == 429
    assert error.body()["error"]["type"] == "tokens"
    assert error.body()["error"]["code"] == "rate_limit_exceeded"
    assert "remaining 80, requested 300" in error.message
    assert error.headers["Retry-After"] == "3"
    assert error.headers["retry-after-ms"] == "2200"
    assert error.headers["x-ratelimit-remaining-tokens"] == "80"


def test_a_replica_alone_takes_its_part_of_each_limit() -> None:
    part = QuotaAsk(10.0, 1000, 5, 1, 1).scaled(1 / 3)
    assert part.rps == pytest.approx(10 / 3)
    assert (part.tpm, part.concurrent) == (333, 1)
