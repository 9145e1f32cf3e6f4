"""Per-request timings, kept from arrival to the last byte."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from gateway.estimate import Estimate
from gateway.slo import SloTarget

Outcome = Literal["pending", "ok", "failed", "cancelled", "rejected", "upstream_status"]


@dataclass(slots=True)
class RequestRecord:
    id: str
    model: str
    endpoint: str
    slo: SloTarget
    stream: bool
    arrival: float
    dispatch: float | None = None
    backend: str | None = None
    served_model: str | None = None  # what served it: a variant's name when degraded
    attempts: int = 0
    first_token: float | None = None
    token_times: list[float] = field(default_factory=list)
    finish: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens the backend reported cached
    expected_cached_tokens: int | None = None  # as the prefix index expected them there
    outcome: Outcome = "pending"
    status: int = 0
    estimate: Estimate | None = field(default=None, repr=False)
    reject_reason: str | None = None
    tenant: str | None = None  # the client key's tenant, when keys are in use

    @property
    def served_prompt_tokens(self) -> int:
        """Prompt tokens it was served with: the backend's usage figure where it gave one,
        else the estimate; none if it was never sent."""
        if self.dispatch is None:
            return 0
        if self.prompt_tokens is not None:
            return self.prompt_tokens
        return self.estimate.prompt_tokens if self.estimate is not None else 0

    @property
    def degraded(self) -> bool:
        return self.served_model is not None and self.served_model != self.model

    @property
    def tokens(self) -> int:
        """Output tokens: the usage figure when the backend gave one, else chunks counted."""
        return (
            self.completion_tokens if self.completion_tokens is not None else len(self.token_times)
        )

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def queue_s(self) -> float | None:
        return None if self.dispatch is None else self.dispatch - self.arrival

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first, over the whole reply."""
        if self.first_token is None or self.tokens < 2:
            return None
        last = self.token_times[-1] if self.token_times else self.finish
        if last is None:
            return None
        return max(0.0, last - self.first_token) / (self.tokens - 1)

    @property
    def e2e_s(self) -> float | None:
        return None if self.finish is None else self.finish - self.arrival

    @property
    def met_slo(self) -> bool:
        """Good: first token and mean TPOT within target.

        A non-streamed reply has no visible first token; it is good when the whole reply came by
        the time its last token was due (TTFT target plus TPOT target per further token).
        """
        if self.outcome != "ok":
            return False
        ttft, tpot = self.ttft_s, self.tpot_s
        if ttft is None:
            e2e = self.e2e_s
            due = self.slo.ttft_s + self.slo.tpot_s * max(0, self.tokens - 1)
            return e2e is not None and e2e <= due
        return ttft <= self.slo.ttft_s and (tpot is None or tpot <= self.slo.tpot_s)


class RecordLog:
    """The most recent finished records, for inspection and for later learning."""

    def __init__(self, capacity: int) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=capacity)
        self.added = 0  # records added since the start

    def add(self, record: RequestRecord) -> None:
        self._records.append(record)
        self.added += 1

    def since(self, count: int) -> tuple[list[RequestRecord], int]:
        """The records added after the first ``count`` (those still kept), and the new count
        to pass next time."""
        fresh = min(self.added - count, len(self._records))
        if fresh <= 0:
            return [], self.added
        return list(itertools.islice(self._records, len(self._records) - fresh, None)), self.added

    def recent(self) -> list[RequestRecord]:
        return list(self._records)
