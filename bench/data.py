"""The shared data sets: ShareGPT prompts with their real reply lengths, and arrival traces."""

from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """``$SLUICE_DATA_DIR``, else the ``shared/data`` folder beside the repository."""
    override = os.environ.get("SLUICE_DATA_DIR")
    return Path(override) if override else REPO.parent / "shared" / "data"


@dataclass(frozen=True, slots=True)
class PromptSample:
    conversation: str
    prompt: str
    prompt_tokens: int
    output_tokens: int


def load_sharegpt(path: Path | None = None, *, limit: int | None = None) -> list[PromptSample]:
    source = path or data_dir() / "sharegpt_lengths.jsonl.gz"
    samples: list[PromptSample] = []
    with gzip.open(source, "rt", encoding="utf-8") as lines:
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
    """Stand-in prompts for when the data set is not beside the repository."""
    rng = random.Random(seed)
    words = ("explain", "the", "latency", "of", "a", "gateway", "in", "detail", "please", "why")
    samples = []
    for i in range(count):
        length = rng.randint(8, 200)
        prompt = " ".join(rng.choice(words) for _ in range(length))
        samples.append(PromptSample(f"synthetic-{i}", prompt, length, rng.randint(16, 400)))
    return samples
