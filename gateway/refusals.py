"""A scheduler's Rejection as the HTTP error its client gets: 429 with the reason and an
honest Retry-After when the objective cannot be met, 503 when no backend can take it."""

from __future__ import annotations

import math

from gateway.errors import NoBackendAvailable, SloUnattainable, SluiceError
from gateway.scheduling.snapshot import Demand, Rejection

REASON_HEADER = "x-sluice-reject-reason"


def refusal(rejection: Rejection, demand: Demand) -> SluiceError:
    reason, model = rejection.reason, demand.model
    if reason == "no_backend":
        return NoBackendAvailable(
            f"no healthy backend serves model {model!r}", headers={"Retry-After": "1"}
        )
    if reason == "queue_timeout":
        return NoBackendAvailable(
            f"no backend slot for model {model!r} within {rejection.budget_s:.2g}s",
            headers={"Retry-After": "1"},
        )
    if reason == "no_ready_backend":
        return NoBackendAvailable(
            f"no backend for model {model!r} became ready before the request's "
            "time-to-first-token deadline",
            headers={"Retry-After": "1", REASON_HEADER: reason},
        )
    if reason == "tpot_unattainable":
        message = (
            f"no backend can decode model {model!r} at {demand.tpot_s * 1000:.0f} ms per token"
        )
    else:
        message = (
            f"time to first token cannot be met: predicted {rejection.predicted_s * 1000:.0f}"
            f" ms, {rejection.budget_s * 1000:.0f} ms of the budget left"
        )
    retry = max(1, math.ceil(rejection.predicted_s - rejection.budget_s))
    return SloUnattainable(
        message, reason=reason, headers={"Retry-After": str(retry), REASON_HEADER: reason}
    )
