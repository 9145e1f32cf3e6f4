"""Where benchmark reports go, and how each is written: JSON, an optional plot, Markdown."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPORTS = Path(__file__).resolve().parent / "reports"


def publish(
    out: Path,
    name: str,
    data: dict[str, Any],
    markdown: str,
    plot: Callable[[dict[str, Any], Path], None] | None = None,
) -> None:
    """Write ``NAME.json``, ``NAME.png`` (with ``plot``) and ``NAME.md`` to ``out``; print the
    Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    if plot is not None:
        plot(data, out / f"{name}.png")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
