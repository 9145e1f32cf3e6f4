"""What the gateway expects of a request before it runs, and what it asks the scheduler for.

One path from a request body to a scheduling Demand, shared by the server and the
virtual-time benchmark, so that the benchmark measures what the server does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.scheduling.snapshot import Demand
from gateway.slo import SloTarget
from predictor.features import PromptInfo, approx_tokens, info_from_request
from predictor.model import LengthModel


@dataclass(frozen=True, slots=True)
class Estimate:
    prompt: PromptInfo
    prompt_tokens: int  # tokenizer-free estimate of the prompt and its history
    output_tokens: int  # predicted reply length, capped by max_tokens
    output_reserve: int  # the conservative quantile, reserved in the KV cache

    @property
    def min_prompt_tokens(self) -> int:
        """A low count of the prompt's tokens: the estimate reads 4 characters a token, and
        hardly any text a tokenizer sees packs more than 8 into one. What is refused as too
        long for the context on this count is too long for certain."""
        return self.prompt_tokens // 2


def estimate(
    body: Mapping[str, Any], lengths: LengthModel, quantile: Literal["p50", "p90", "p95"]
) -> Estimate:
    prompt = info_from_request(body)
    prediction = lengths.predict(prompt)
    return Estimate(
        prompt=prompt,
        prompt_tokens=approx_tokens(prompt.prompt) + prompt.history_tokens,
        output_tokens=prediction.tokens,
        output_reserve=getattr(prediction, quantile),
    )


def demand(
    model: str,
    arrival: float,
    slo: SloTarget,
    expected: Estimate,
    tenant: str | None = None,
    prefix: tuple[int, ...] = (),
    session: str | None = None,
) -> Demand:
    return Demand(
        model=model,
        arrival=arrival,
        deadline=arrival + slo.ttft_s,
        tpot_s=slo.tpot_s,
        prompt_tokens=expected.prompt_tokens,
        predicted_tokens=expected.output_tokens,
        reserve_tokens=expected.prompt_tokens + expected.output_reserve,
        rejectable=slo.rejectable,
        tenant=tenant,
        prefix=prefix,
        session=session,
    )
