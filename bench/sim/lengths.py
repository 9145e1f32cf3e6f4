"""How long a simulated reply is.

A client that sends a ShareGPT prompt gets that prompt's real reply length (and its real prompt
token count, so that prefill costs what it would): the table maps a hash of the prompt text to
both. Other prompts get a seeded draw from a configurable distribution. The gateway never reads
this table; it only sees the replies.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from bench.data import open_text


def prompt_key(text: str) -> bytes:
    return hashlib.blake2b(text.strip().encode("utf-8"), digest_size=12).digest()


@dataclass(frozen=True, slots=True)
class KnownPrompt:
    prompt_tokens: int
    output_tokens: int


class LengthTable:
    def __init__(self, entries: dict[bytes, KnownPrompt] | None = None) -> None:
        self._entries = entries or {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, text: str) -> KnownPrompt | None:
        return self._entries.get(prompt_key(text)) if self._entries else None

    @classmethod
    def from_sharegpt(cls, path: Path) -> LengthTable:
        """Rows with ``prompt``, ``prompt_tokens``, ``output_tokens`` (gzip or plain JSONL)."""
        entries: dict[bytes, KnownPrompt] = {}
        with open_text(path) as lines:
            for line in lines:
                row = json.loads(line)
                entries[prompt_key(row["prompt"])] = KnownPrompt(
                    int(row["prompt_tokens"]), int(row["output_tokens"])
                )
        return cls(entries)


@dataclass(frozen=True, slots=True)
class LengthDistribution:
    """Reply lengths for unknown prompts: ``exponential`` or ``lognormal`` with this mean."""

    kind: str = "lognormal"
    mean: float = 200.0
    sigma: float = 1.0

    def draw(self, rng: random.Random) -> int:
        if self.kind == "exponential":
            value = rng.expovariate(1.0 / self.mean)
        elif self.kind == "lognormal":
            mu = math.log(self.mean) - self.sigma**2 / 2
            value = rng.lognormvariate(mu, self.sigma)
        else:
            raise ValueError(f"unknown length distribution {self.kind!r}")
        return max(1, round(value))
