from __future__ import annotations

import json
import random

import pytest

from predictor.data import Sample, sample_from_row
from predictor.features import PromptInfo
from predictor.online import SampleLog, better, retrain, to_jsonl
from predictor.train import fit


@pytest.mark.parametrize(
    ("candidate", "current", "expected"),
    [
        ({"kendall_tau": 0.5, "mae": 90.0}, {"kendall_tau": 0.4, "mae": 50.0}, True),
        ({"kendall_tau": 0.4, "mae": 40.0}, {"kendall_tau": 0.4, "mae": 50.0}, True),
        ({"kendall_tau": 0.4, "mae": 50.0}, {"kendall_tau": 0.4, "mae": 50.0}, False),
        ({"kendall_tau": 0.3, "mae": 10.0}, {"kendall_tau": 0.4, "mae": 50.0}, False),
    ],
)
def test_swap_rule(candidate: dict[str, float], current: dict[str, float], expected: bool) -> None:
    assert better(candidate, current) is expected


def _samples(count: int, seed: int, *, flipped: bool) -> list[Sample]:
    """'essay' prompts get long replies and 'quick' ones short; ``flipped`` swaps them."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        topic = rng.choice(["rivers", "bread", "stars", "taxes", "music"])
        long = rng.random() < 0.5
        prompt = f"essay on {topic} please" if long else f"quick note on {topic} please"
        tokens = rng.randint(500, 700) if long != flipped else rng.randint(5, 30)
        out.append(Sample(f"c{seed}-{i}", PromptInfo(prompt), tokens))
    return out


def test_retrain_swaps_in_a_model_that_fits_recent_traffic() -> None:
    base = _samples(600, 1, flipped=False)
    current, _, _ = fit(base)
    recent = _samples(300, 2, flipped=True)  # the traffic changed its ways
    outcome = retrain(current, base, recent, recent_weight=4)
    assert outcome.accepted, outcome.report()
    assert outcome.model is not None
    assert outcome.candidate["kendall_tau"] > outcome.current["kendall_tau"]
    assert outcome.held_out == 60


def test_too_few_samples_keep_the_model() -> None:
    base = _samples(200, 1, flipped=False)
    current, _, _ = fit(base)
    outcome = retrain(current, base, _samples(10, 3, flipped=True))
    assert not outcome.accepted
    assert outcome.model is None
    assert "only 10" in outcome.reason


def test_sample_log_is_bounded_and_exports_the_data_format() -> None:
    log = SampleLog(2)
    for i in range(3):
        info = PromptInfo(f"p{i}", 5, 1, True, 64, "m", 1, 40 + i, 40.0 + i)
        log.add(f"r{i}", info, 10 + i)
    assert [s.group for s in log.recent()] == ["r1", "r2"]
    rows = [json.loads(line) for line in to_jsonl(log.recent()).splitlines()]
    assert rows[0]["prompt"] == "p1"
    assert rows[0]["output_tokens"] == 11
    assert rows[0]["history_tokens"] == 5
    # A recorded sample reads back whole: its chat structure is not derived again.
    assert [sample_from_row(row) for row in rows] == log.recent()
