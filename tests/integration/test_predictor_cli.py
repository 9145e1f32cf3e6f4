"""``sluice predictor train`` and ``evaluate`` as subprocesses, on a file of the data format."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

SLUICE = [sys.executable, "-m", "gateway"]


def _write_data(path: Path, rows: int) -> None:
    rng = random.Random(0)
    topics = ["rivers", "taxes", "python", "music", "stars", "bread"]
    with path.open("w") as out:
        for i in range(rows):
            long = rng.random() < 0.5
            topic = rng.choice(topics)
            prompt = (
                f"Write a detailed essay about {topic}." if long else f"Is {topic} good? yes or no"
            )
            out.write(
                json.dumps(
                    {
                        "conversation": f"c{i // 2}",
                        "turn": i % 2,
                        "prompt": prompt,
                        "prompt_tokens": 8,
                        "history_tokens": 0,
                        "output_tokens": rng.randint(600, 900) if long else rng.randint(2, 20),
                    }
                )
                + "\n"
            )


def test_train_then_evaluate(tmp_path: Path) -> None:
    data = tmp_path / "lengths.jsonl"
    _write_data(data, 1200)
    manifest = tmp_path / "model.json"
    subprocess.run(
        [*SLUICE, "predictor", "train", "--data", str(data), "--out", str(manifest)],
        check=True,
        capture_output=True,
    )
    done = subprocess.run(
        [*SLUICE, "predictor", "evaluate", "--data", str(data), "--model", str(manifest), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(done.stdout)
    for key in (
        "kendall_tau",
        "mae",
        "rmse",
        "within_1_bucket",
        "within_50",
        "within_100",
        "predict_p50_us",
        "predict_p99_us",
        "n",
    ):
        assert key in result, key
    assert result["n"] > 100
    # The cue separates long from short replies perfectly; the mean baseline cannot.
    assert result["kendall_tau"] > 0.5
    assert result["mae"] < result["baselines"]["train_mean"]["mae"] / 2


def test_packaged_model_on_any_file_of_the_format(tmp_path: Path) -> None:
    data = tmp_path / "other.jsonl"
    _write_data(data, 50)
    done = subprocess.run(
        [*SLUICE, "predictor", "evaluate", "--data", str(data), "--all"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "Kendall τ" in done.stdout
    assert "n = 50" in done.stdout


def test_bad_data_file(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "x"}\n')
    done = subprocess.run(
        [*SLUICE, "predictor", "evaluate", "--data", str(data)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "bad.jsonl:1" in done.stderr


def test_gateway_refuses_a_broken_model(tmp_path: Path) -> None:
    manifest = tmp_path / "broken.json"
    manifest.write_text("{}")
    done = subprocess.run(
        [*SLUICE, "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"SLUICE_PREDICTOR_ARTIFACT": str(manifest), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert "refusing the length model" in done.stderr


def test_retrain_command(tmp_path: Path) -> None:
    base = tmp_path / "base.jsonl"
    _write_data(base, 600)
    model = tmp_path / "model.json"
    subprocess.run(
        [*SLUICE, "predictor", "train", "--data", str(base), "--out", str(model)],
        check=True,
        capture_output=True,
    )
    # Recent traffic where the cue means the opposite: the old model ranks it backwards.
    recent = tmp_path / "recent.jsonl"
    rows = [json.loads(line) for line in base.read_text().splitlines()][:300]
    with recent.open("w") as out:
        for row in rows:
            row["output_tokens"] = 10 if row["output_tokens"] > 100 else 700
            out.write(json.dumps(row) + "\n")
    new = tmp_path / "new.json"
    done = subprocess.run(
        [
            *SLUICE,
            "predictor",
            "retrain",
            "--samples",
            str(recent),
            "--data",
            str(base),
            "--model",
            str(model),
            "--out",
            str(new),
        ],
        capture_output=True,
        text=True,
    )
    outcome = json.loads(done.stdout)
    assert done.returncode == 0, outcome
    assert outcome["accepted"]
    assert new.exists()
