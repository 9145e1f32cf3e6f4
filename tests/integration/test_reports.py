"""Every committed report is what its code writes from its saved JSON: none edited by hand,
none left behind by a change to the code that writes it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bench.publish import REPORTS
from bench.regenerate import PREDICTOR_REPORTS, REPORTS_BY_NAME

REPO = Path(__file__).resolve().parents[2]


def test_every_report_regenerates_from_its_json(tmp_path: Path) -> None:
    bench_out, predictor_out = tmp_path / "bench", tmp_path / "predictor"
    bench_out.mkdir()
    predictor_out.mkdir()
    saved = [name for name in REPORTS_BY_NAME if (REPORTS / f"{name}.json").exists()]
    assert {"compare", "guards", "tenants", "prefix"} <= set(saved)
    for name in saved:
        shutil.copy(REPORTS / f"{name}.json", bench_out)
    shutil.copy(PREDICTOR_REPORTS / "evaluation.json", predictor_out)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.regenerate",
            "--out",
            str(bench_out),
            "--predictor-out",
            str(predictor_out),
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    for name in saved:
        written = (bench_out / f"{name}.md").read_text()
        assert written == (REPORTS / f"{name}.md").read_text(), f"{name}.md drifted"
    evaluation = (predictor_out / "evaluation.md").read_text()
    assert evaluation == (PREDICTOR_REPORTS / "evaluation.md").read_text()
