from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor

from predictor import artifact
from predictor.evaluate import metrics
from predictor.features import (
    DENSE_NAMES,
    PromptInfo,
    featurize,
    info_from_request,
    prompt_words,
)
from predictor.trees import export


def test_exported_trees_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 6))
    y = np.sin(x[:, 0]) + x[:, 1] * x[:, 2] + rng.normal(scale=0.1, size=2000)
    model = HistGradientBoostingRegressor(max_iter=60, max_depth=6, random_state=0).fit(x, y)
    ours = export(model)
    probe = rng.normal(size=(300, 6))
    assert np.allclose(ours.predict(probe), model.predict(probe), atol=1e-9)


def test_chat_request_structure() -> None:
    body = {
        "model": "m",
        "max_tokens": 64,
        "messages": [
            {"role": "system", "content": "Be helpful."},
            {"role": "user", "content": "Write an essay about rivers."},
            {"role": "assistant", "content": "x" * 400},
            {"role": "user", "content": [{"type": "text", "text": "Now summarize it."}]},
        ],
    }
    info = info_from_request(body)
    assert info.prompt == "Now summarize it."
    assert info.turn == 1
    assert info.has_system
    assert info.max_tokens == 64
    assert info.history_tokens == 3 + 7 + 100  # about four characters a token


def test_completion_request() -> None:
    info = info_from_request({"model": "m", "prompt": ["a", "b"], "max_tokens": True})
    assert info == PromptInfo(prompt="a b", model="m")


def test_dense_cues() -> None:
    _, dense = featurize(PromptInfo("Please write a detailed essay:\n```code``` ok?"))
    named = dict(zip(DENSE_NAMES, dense, strict=True))
    for cue in ("cue_write", "cue_long", "cue_long_form", "cue_code", "cue_question_end"):
        assert named[cue] == 1.0, cue
    assert named["cue_translate"] == 0.0
    assert named["first_turn"] == 1.0


def test_long_prompts_are_read_in_a_bounded_window() -> None:
    words = prompt_words("alpha " * 5000 + "omega")
    assert len(words) == 320
    assert words[-1] == "omega"


def test_packaged_model_predicts_and_caps() -> None:
    model = artifact.load().model
    essay = model.predict(PromptInfo("Write a long detailed essay on the history of Rome."))
    yes_no = model.predict(PromptInfo("Thanks!"))
    assert essay.tokens > yes_no.tokens
    assert essay.p10 <= essay.p50 <= essay.p90 <= essay.p95
    capped = model.predict(PromptInfo("Write a long essay.", max_tokens=7))
    assert capped.tokens <= 7
    assert capped.p95 <= 7


def _copy_packaged(tmp_path: Path) -> Path:
    for suffix in (".json", ".npz"):
        shutil.copy(artifact.PACKAGED.with_suffix(suffix), tmp_path)
    return tmp_path / artifact.PACKAGED.name


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    manifest = _copy_packaged(tmp_path)
    weights = manifest.with_suffix(".npz")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(artifact.ArtifactError, match="SHA-256"):
        artifact.load(manifest)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["schema"].update(hash_bits=20), "feature schema"),
        (lambda m: m["schema"]["dense"].pop(), "feature schema"),
        (lambda m: m.update(format="pickle"), "is not a"),
        (lambda m: m.update(weights="absent.npz"), "cannot read model weights"),
    ],
)
def test_mismatched_manifests_are_refused(tmp_path: Path, edit: object, message: str) -> None:
    manifest = _copy_packaged(tmp_path)
    content = json.loads(manifest.read_text())
    edit(content)  # type: ignore[operator]
    manifest.write_text(json.dumps(content))
    with pytest.raises(artifact.ArtifactError, match=message):
        artifact.load(manifest)


def test_garbage_manifest(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(artifact.ArtifactError, match="cannot read"):
        artifact.load(bad)


def test_metrics() -> None:
    result = metrics([100, 200, 300, 400], [100, 250, 500, 390])
    assert result["kendall_tau"] == pytest.approx(2 / 3)
    assert result["mae"] == pytest.approx((0 + 50 + 200 + 10) / 4)
    assert result["within_50"] == 0.75
    assert result["within_100"] == 0.75
    # Buckets of 82 tokens: 300 -> 3, 500 -> 6 is the only pair more than one apart.
    assert result["within_1_bucket"] == 0.75
