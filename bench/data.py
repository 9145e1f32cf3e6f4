"""The shared data sets: ShareGPT prompts with their real reply lengths, and arrival traces."""

from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SHIPPED = Path(__file__).resolve().parent / "datasets"


def data_dir() -> Path:
    """``$SLUICE_DATA_DIR``, else the data sets shipped in the repository (``bench/datasets``)."""
    override = os.environ.get("SLUICE_DATA_DIR")
    return Path(override) if override else SHIPPED


def data_file(relative: str) -> Path:
    """A data set under ``data_dir()``, as it is or gzipped (``NAME.gz``), whichever exists."""
    path = data_dir() / relative
    if path.exists():
        return path
    packed = path.with_name(path.name + ".gz")
    if packed.exists():
        return packed
    raise FileNotFoundError(f"no data set {relative} (or {relative}.gz) in {data_dir()}")


def open_text(path: Path) -> IO[str]:
    """Open a data file for reading as text, gunzipping a ``.gz`` one."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class PromptSample:
    conversation: str
    prompt: str  # the (last) user message
    prompt_tokens: int
    output_tokens: int
    # The conversation before it: user and assistant messages in turn, the first a user's.
    earlier: tuple[str, ...] = ()


def load_sharegpt(path: Path | None = None, *, limit: int | None = None) -> list[PromptSample]:
    source = path or data_file("sharegpt_lengths.jsonl")
    samples: list[PromptSample] = []
    with open_text(source) as lines:
        for line in lines:
            row = json.loads(line)
            samples.append(
                PromptSample(
                    str(row["conversation"]),
                    str(row["prompt"]),
                    int(row["prompt_tokens"]),
                    int(row["output_tokens"]),
                )
            )
            if limit is not None and len(samples) >= limit:
                break
    return samples


def synthetic_prompts(count: int, seed: int = 0) -> list[PromptSample]:
    """Stand-in prompts, for tests that need no real text."""
    rng = random.Random(seed)
    words = ("explain", "the", "latency", "of", "a", "gateway", "in", "detail", "please", "why")
    samples = []
    for i in range(count):
        length = rng.randint(8, 200)
        prompt = " ".join(rng.choice(words) for _ in range(length))
        samples.append(PromptSample(f"synthetic-{i}", prompt, length, rng.randint(16, 400)))
    return samples
