from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor

from predictor import artifact
from predictor.data import load_samples
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
    assert (info.replies, info.last_reply_tokens, info.mean_reply_tokens) == (1, 100, 100.0)


def test_replies_are_the_assistant_turns_before_the_prompt() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "x" * 40},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "x" * 200},
            {"role": "user", "content": "c"},
        ]
    }
    info = info_from_request(body)
    assert (info.replies, info.last_reply_tokens, info.mean_reply_tokens) == (2, 50, 30.0)
    first = info_from_request({"messages": [{"role": "user", "content": "a"}]})
    assert (first.replies, first.last_reply_tokens, first.mean_reply_tokens) == (0, 0, 0.0)


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
    assert named["replies"] == 0.0


def test_reply_features_follow_the_replies() -> None:
    short = dict(
        zip(
            DENSE_NAMES,
            featurize(PromptInfo("ok", replies=2, last_reply_tokens=9, mean_reply_tokens=20.0))[1],
            strict=True,
        )
    )
    assert short["replies"] == 2.0
    assert short["log_last_reply_tokens"] == pytest.approx(np.log1p(9))
    assert short["log_mean_reply_tokens"] == pytest.approx(np.log1p(20.0))


def test_a_long_last_reply_predicts_a_longer_reply() -> None:
    model = artifact.load().model
    prompt = "Can you continue?"
    after_short = model.predict(
        PromptInfo(prompt, 60, 1, replies=1, last_reply_tokens=30, mean_reply_tokens=30.0)
    )
    after_long = model.predict(
        PromptInfo(prompt, 800, 1, replies=1, last_reply_tokens=700, mean_reply_tokens=700.0)
    )
    assert after_long.tokens > after_short.tokens


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


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"scale_scores": np.asarray([0.0, 0.0, 1.0])}, "must increase"),
        ({"scale_log_tokens": np.asarray([1.0, 2.0])}, "differ in shape"),
    ],
)
def test_a_malformed_target_scale_is_refused(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    model = artifact.load().model
    weights = {**model.arrays(), **arrays}
    if "scale_scores" in arrays:
        weights["scale_log_tokens"] = np.asarray([1.0, 2.0, 3.0])
    manifest, data = artifact.encode(model, version="t", training={}, weights_name="t.npz")
    with np.load(io.BytesIO(data)) as original:
        assert set(original.files) == set(weights)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **weights)
    manifest["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    with pytest.raises(artifact.ArtifactError, match=message):
        artifact.decode(manifest, buffer.getvalue(), "t.npz")


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


def test_data_rows_get_their_conversations_earlier_replies(tmp_path: Path) -> None:
    rows = [
        {"conversation": "a", "turn": 2, "prompt": "z", "output_tokens": 30},
        {"conversation": "a", "turn": 0, "prompt": "x", "output_tokens": 10},
        {"conversation": "b", "turn": 1, "prompt": "y", "output_tokens": 99},
        {"conversation": "a", "turn": 1, "prompt": "y", "output_tokens": 20},
        {"conversation": "b", "turn": 0, "prompt": "w", "output_tokens": 7, "replies": 0},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    infos = [s.info for s in load_samples(path)]
    assert [(i.replies, i.last_reply_tokens, i.mean_reply_tokens) for i in infos] == [
        (2, 20, 15.0),  # turns 0 and 1 of "a", in turn order though the file is not
        (0, 0, 0.0),
        (0, 0, 0.0),  # "b" turn 0 records its own replies, so it lends none
        (1, 10, 10.0),
        (0, 0, 0.0),
    ]


def test_a_row_that_is_not_an_object_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "x", "output_tokens": 3}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl:2"):
        load_samples(path)
