"""What the gateway expects of a request before it runs, and what it asks the scheduler for.

One path from a request body to a scheduling Demand, shared by the server and the
virtual-time benchmark, so that the benchmark measures what the server does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.scheduling.snapshot import Demand, Route
from gateway.slo import SloTarget
from gateway.tokens import DEFAULT_CHARS_PER_TOKEN
from predictor.features import PromptInfo, approx_tokens, info_from_request
from predictor.model import LengthModel


@dataclass(frozen=True, slots=True)
class Estimate:
    prompt: PromptInfo
    prompt_tokens: int  # tokenizer-free estimate of the prompt and its history
    output_tokens: int  # predicted reply length, capped by max_tokens
    output_reserve: int  # the conservative quantile, reserved in the KV cache
    known_length: bool = False  # the request fixes its own length: no prediction was needed
    min_prompt_tokens: int = 0  # a low count: see ``estimate``


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def length_bounds(body: Mapping[str, Any]) -> tuple[int, int | None]:
    """What the request itself says of its reply's length: at least ``min_tokens`` (at most
    its limit), and exactly its limit when it cannot stop before (``ignore_eos`` with no stop
    strings or stop tokens, or ``min_tokens`` equal to the limit)."""
    limit = _count(body.get("max_tokens", body.get("max_completion_tokens")))
    floor = max(0, _count(body.get("min_tokens")) or 0)
    if limit is not None:
        floor = min(floor, limit)
        stops = body.get("stop") or body.get("stop_token_ids")
        if (body.get("ignore_eos") is True and not stops) or floor == limit:
            return limit, limit
    return floor, None


def estimate(
    body: Mapping[str, Any],
    lengths: LengthModel,
    quantile: Literal["p50", "p90", "p95"],
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
) -> Estimate:
    """The prompt's size and the reply's predicted length (and its conservative quantile);
    a length the request fixes itself replaces the prediction, and ``min_tokens`` floors it.

    The prompt is counted at ``chars_per_token`` (the model's calibrated ratio, by default 4
    characters a token); its low count at 8 characters a token, which hardly any text a
    tokenizer sees packs into one: what is refused as too long for the context on that count
    is too long for certain."""
    prompt = info_from_request(body)
    cl100k = approx_tokens(prompt.prompt) + prompt.history_tokens  # at 4 characters a token
    floor, fixed = length_bounds(body)
    if fixed is not None:
        output = reserve = fixed
    else:
        prediction = lengths.predict(prompt)
        output = max(floor, prediction.tokens)
        reserve = max(floor, getattr(prediction, quantile))
    return Estimate(
        prompt=prompt,
        prompt_tokens=math.ceil(cl100k * DEFAULT_CHARS_PER_TOKEN / chars_per_token),
        output_tokens=output,
        output_reserve=reserve,
        known_length=fixed is not None,
        min_prompt_tokens=cl100k // 2,
    )


def demand(
    model: str,
    arrival: float,
    slo: SloTarget,
    expected: Estimate,
    tenant: str | None = None,
    prefix: tuple[int, ...] = (),
    session: str | None = None,
    variants: tuple[Route, ...] = (),
) -> Demand:
    """What the scheduler weighs of a request; ``variants`` (its model's, in order) only
    where its objective lets it be degraded."""
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
        protected=slo.protected,
        degrade=slo.degrade,
        variants=variants if slo.degrade != "never" else (),
    )
