"""What a request says of its own reply's length replaces or floors the predictor's guess."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.estimate import estimate, length_bounds
from predictor import artifact

PROMPT = {"model": "m", "prompt": "Write a long essay about rivers. " * 20}


@pytest.mark.parametrize(
    ("extra", "bounds"),
    [
        ({}, (0, None)),
        ({"max_tokens": 300}, (0, None)),
        ({"max_tokens": 300, "ignore_eos": True}, (300, 300)),
        ({"max_completion_tokens": 70, "ignore_eos": True}, (70, 70)),
        # Stop strings or stop tokens can still end it early: only the floor is known.
        ({"max_tokens": 300, "ignore_eos": True, "stop": ["\n"]}, (0, None)),
        ({"max_tokens": 300, "ignore_eos": True, "stop_token_ids": [2]}, (0, None)),
        ({"ignore_eos": True}, (0, None)),  # no limit: it runs to the context's end
        ({"max_tokens": 300, "ignore_eos": False}, (0, None)),
        ({"max_tokens": 300, "min_tokens": 120}, (120, None)),
        ({"max_tokens": 300, "min_tokens": 300}, (300, 300)),
        ({"min_tokens": 50}, (50, None)),
        # Values of the wrong type say nothing (the body's validation answers them).
        ({"max_tokens": True, "ignore_eos": True, "min_tokens": "9"}, (0, None)),
    ],
)
def test_length_bounds(extra: dict[str, Any], bounds: tuple[int, int | None]) -> None:
    assert length_bounds({**PROMPT, **extra}) == bounds


def test_a_fixed_length_replaces_the_prediction_and_a_floor_lifts_it() -> None:
    lengths = artifact.load().model
    guessed = estimate({**PROMPT, "max_tokens": 4000}, lengths, "p90")
    assert not guessed.known_length
    fixed = estimate({**PROMPT, "max_tokens": 1234, "ignore_eos": True}, lengths, "p90")
    assert (fixed.output_tokens, fixed.output_reserve, fixed.known_length) == (1234, 1234, True)
    floor = guessed.output_reserve + 500
    floored = estimate({**PROMPT, "max_tokens": 4000, "min_tokens": floor}, lengths, "p90")
    assert floored.output_tokens == floored.output_reserve == floor
    assert not floored.known_length
    assert floored.prompt_tokens == guessed.prompt_tokens
