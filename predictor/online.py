"""Learning from the gateway's own traffic: completed requests become samples, and a retrain
swaps in a new model only when it ranks a held-out slice of recent traffic better."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from predictor.data import Sample, split
from predictor.evaluate import metrics
from predictor.features import PromptInfo
from predictor.model import LengthModel
from predictor.train import fit

HELD_OUT_FRACTION = 0.2
MIN_RECENT = 50


class SampleLog:
    """The most recent (request, actual output tokens) pairs, oldest first."""

    def __init__(self, capacity: int) -> None:
        self._samples: deque[Sample] = deque(maxlen=capacity)
        self._unshared: deque[Sample] = deque(maxlen=capacity)  # not yet in shared state

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, group: str, info: PromptInfo, output_tokens: int) -> None:
        sample = Sample(group, info, output_tokens)
        self._samples.append(sample)
        self._unshared.append(sample)

    def take_unshared(self) -> list[Sample]:
        """The samples added since the last call, for a replica to share."""
        taken = list(self._unshared)
        self._unshared.clear()
        return taken

    def give_back_unshared(self, samples: list[Sample]) -> None:
        """Samples that could not be shared: offered again next time, oldest first."""
        self._unshared.extendleft(reversed(samples))

    def recent(self) -> list[Sample]:
        return list(self._samples)


def to_jsonl(samples: Iterable[Sample]) -> str:
    """Samples in the data set's format (plus the request's chat structure)."""
    lines = []
    for s in samples:
        info = asdict(s.info)
        lines.append(
            json.dumps(
                {
                    "conversation": s.group,
                    "prompt": info.pop("prompt"),
                    "output_tokens": s.output_tokens,
                    "prompt_tokens": 0,
                    **info,
                }
            )
        )
    return "\n".join(lines) + ("\n" if lines else "")


@dataclass(frozen=True)
class RetrainOutcome:
    accepted: bool
    reason: str
    current: dict[str, float]
    candidate: dict[str, float]
    trained_on: int
    held_out: int
    model: LengthModel | None

    def report(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "held_out_recent": self.held_out,
            "trained_on": self.trained_on,
            "current": self.current,
            "candidate": self.candidate,
        }


def better(candidate: dict[str, float], current: dict[str, float]) -> bool:
    """The swap rule: a higher Kendall tau on the held-out slice; on a tie, a lower MAE."""
    if candidate["kendall_tau"] != current["kendall_tau"]:
        return candidate["kendall_tau"] > current["kendall_tau"]
    return candidate["mae"] < current["mae"]


def retrain(
    current: LengthModel, base: list[Sample], recent: list[Sample], *, recent_weight: int = 0
) -> RetrainOutcome:
    """Train on the base data's training part plus the older 80% of recent traffic (repeated
    ``recent_weight`` times, by default enough to weigh as much as a quarter of the base), and
    compare with ``current`` on the newest 20%."""
    if len(recent) < MIN_RECENT:
        return RetrainOutcome(
            False, f"only {len(recent)} recent samples (need {MIN_RECENT})", {}, {}, 0, 0, None
        )
    cut = int(len(recent) * (1 - HELD_OUT_FRACTION))
    fresh, held_out = recent[:cut], recent[cut:]
    base_train, _ = split(base)
    weight = recent_weight or max(1, len(base_train) // (4 * max(1, len(fresh))))
    training = base_train + fresh * weight
    candidate, _, _ = fit(training)
    actual = [s.output_tokens for s in held_out]

    def score(model: LengthModel) -> dict[str, float]:
        return metrics([model.predict(s.info).tokens for s in held_out], actual)

    now_scores, new_scores = score(current), score(candidate)
    accepted = bool(np.isfinite(new_scores["kendall_tau"])) and better(new_scores, now_scores)
    reason = (
        "ranks the held-out recent traffic better"
        if accepted
        else ("does not rank the held-out recent traffic better; kept the current model")
    )
    return RetrainOutcome(
        accepted,
        reason,
        now_scores,
        new_scores,
        len(training),
        len(held_out),
        candidate if accepted else None,
    )
