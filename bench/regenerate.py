"""Rewrite every committed report from its saved JSON: ``python -m bench.regenerate``
(``make reports``). Nothing is measured; each report's numbers and verdicts come from the code
that writes it, so a report edited by hand, or left behind by a change to that code, shows up
as a diff.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    calibrate,
    compare,
    guards,
    lora,
    macro,
    overhead,
    prefix,
    redis_shard,
    replicas,
    variants,
)
from bench import tenants as tenants_bench
from bench.publish import REPORTS, publish
from bench.real import __main__ as real
from predictor import cli as predictor_cli

Markdown = Callable[[dict[str, Any]], str]
Plot = Callable[[dict[str, Any], Path], None] | None

REPORTS_BY_NAME: dict[str, tuple[Markdown, Plot]] = {
    "compare": (compare.markdown, compare.plot),
    "guards": (guards.markdown, guards.plot),
    "lora": (lora.markdown, lora.plot),
    "macro": (macro.markdown, macro.plot),
    "overhead": (overhead.markdown, None),
    "prefix": (prefix.markdown, prefix.plot),
    "real": (real.markdown, real.plot),
    "redis_shard": (redis_shard.markdown, redis_shard.plot),
    "replicas": (replicas.markdown, None),
    "sim_calibration": (calibrate.markdown, calibrate.plot),
    "tenants": (tenants_bench.markdown, tenants_bench.plot),
    "variants": (variants.markdown, variants.plot),
}
PREDICTOR_REPORTS = Path(predictor_cli.__file__).resolve().parent / "reports"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPORTS)
    parser.add_argument("--predictor-out", type=Path, default=PREDICTOR_REPORTS)
    parser.add_argument("--plots", action="store_true", help="redraw the plots too")
    args = parser.parse_args()
    for name, (markdown, plot) in REPORTS_BY_NAME.items():
        saved = args.out / f"{name}.json"
        if not saved.exists():
            print(f"{name}: no {saved.name}, skipped", file=sys.stderr)
            continue
        data = json.loads(saved.read_text())
        publish(args.out, name, data, markdown(data), plot if args.plots else None)
    evaluation = args.predictor_out / "evaluation.json"
    if evaluation.exists():
        predictor_cli.write_report(json.loads(evaluation.read_text()), args.predictor_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
