"""Data sets in the ShareGPT-lengths format, and the split by conversation."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
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


def with_earlier_replies(rows: list[dict[str, Any]], samples: list[Sample]) -> list[Sample]:
    """The samples of ``rows``, where a row that does not record its earlier replies gets them
    from the rows of the same conversation with a lower turn (their ``output_tokens``), as a
    chat request carries them."""
    derived = ["conversation" in row and "replies" not in row for row in rows]
    outputs: dict[str, list[tuple[int, int]]] = {}
    for needs, sample in zip(derived, samples, strict=True):
        if needs:
            outputs.setdefault(sample.group, []).append((sample.info.turn, sample.output_tokens))
    filled = []
    for needs, sample in zip(derived, samples, strict=True):
        if needs:
            turn = sample.info.turn
            earlier = sorted(t for t in outputs[sample.group] if t[0] < turn)
            info = replace(sample.info, **reply_fields([tokens for _, tokens in earlier]))
            sample = replace(sample, info=info)
        filled.append(sample)
    return filled


def load_samples(path: Path) -> list[Sample]:
    rows: list[dict[str, Any]] = []
    samples: list[Sample] = []
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise TypeError("a row is a JSON object")
            samples.append(sample_from_row(row))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: not a lengths row: {exc}") from exc
        rows.append(row)
    return with_earlier_replies(rows, samples)


def held_out(group: str) -> bool:
    """Whether a conversation is in the held-out part: stable across runs and files."""
    return zlib.crc32(group.encode("utf-8")) % HELD_OUT_MODULUS == 0


def split(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    train = [s for s in samples if not held_out(s.group)]
    test = [s for s in samples if held_out(s.group)]
    return train, test
