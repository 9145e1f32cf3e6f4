"""Reading the few gauges the gateway needs out of a Prometheus text exposition."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable


def collect_samples(text: str, names: Iterable[str]) -> dict[str, list[float]]:
    """Every sample value of each named metric (one per label set); absent names are left out.

    Only the plain sample lines are read, so a large exposition costs one pass over its lines.
    """
    wanted = tuple(names)
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        for name in wanted:
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                value = _sample_value(line)
                if value is not None:
                    found.setdefault(name, []).append(value)
                break
    return found


def _sample_value(line: str) -> float | None:
    tail = line.rpartition("}")[2] if "}" in line else line.partition(" ")[2]
    fields = tail.split()
    if not fields:
        return None
    try:
        value = float(fields[0])
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def first_labels(text: str, name: str) -> dict[str, str]:
    """The labels of the first sample of ``name`` (an info metric's payload)."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            body = line[len(name) + 1 : line.rfind("}")]
            return dict(_LABEL.findall(body))
    return {}


_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
