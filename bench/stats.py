"""Small summaries of measured samples."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def gaps(times: Sequence[float]) -> list[float]:
    """Differences between successive timestamps."""
    return [b - a for a, b in pairwise(times)]
