"""Data sets in the ShareGPT-lengths format, and the split by conversation."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from predictor.features import PromptInfo, info_from_row, reply_fields

HELD_OUT_MODULUS = 5  # one conversation in five is held out


@dataclass(frozen=True, slots=True)
class Sample:
    group: str
    info: PromptInfo
    output_tokens: int


def _lines(path: Path) -> Iterator[str]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            yield from handle
    else:
        with path.open(encoding="utf-8") as handle:
            yield from handle


def sample_from_row(row: dict[str, Any]) -> Sample:
    return Sample(
        str(row.get("conversation", row["prompt"])), info_from_row(row), int(row["output_tokens"])
    )


def with_earlier_replies(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose earlier replies are not recorded get them from the rows of the same
    conversation with a lower turn (their ``output_tokens``), as a chat request carries them."""
    outputs: dict[str, list[tuple[int, int]]] = {}
    for row in rows:
        if "conversation" in row and "replies" not in row:
            outputs.setdefault(str(row["conversation"]), []).append(
                (int(row.get("turn", 0)), int(row["output_tokens"]))
            )
    filled = []
    for row in rows:
        if "conversation" in row and "replies" not in row:
            turn = int(row.get("turn", 0))
            earlier = sorted(t for t in outputs[str(row["conversation"])] if t[0] < turn)
            row = {**row, **reply_fields([tokens for _, tokens in earlier])}
        filled.append(row)
    return filled


def load_samples(path: Path) -> list[Sample]:
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise TypeError("a row is a JSON object")
            int(row["output_tokens"])
            int(row.get("turn", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: not a lengths row: {exc}") from exc
        rows.append((number, row))
    filled = with_earlier_replies([row for _, row in rows])
    samples = []
    for (number, _), row in zip(rows, filled, strict=True):
        try:
            samples.append(sample_from_row(row))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: not a lengths row: {exc}") from exc
    return samples


def held_out(group: str) -> bool:
    """Whether a conversation is in the held-out part: stable across runs and files."""
    return zlib.crc32(group.encode("utf-8")) % HELD_OUT_MODULUS == 0


def split(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    train = [s for s in samples if not held_out(s.group)]
    test = [s for s in samples if held_out(s.group)]
    return train, test
