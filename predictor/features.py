"""Features of a request, shared by training and serving so that the two cannot drift.

A request is reduced to a ``PromptInfo`` (from a data-set row or from an OpenAI request body),
then to a sparse bag of hashed word uni- and bigrams (``text_features``) and a short dense
vector of structure and lexical cues (``dense_features``).
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

SCHEMA = "sluice-length-features/2"
HASH_BITS = 18
HASH_SIZE = 1 << HASH_BITS
_MASK = HASH_SIZE - 1
_WORD = re.compile(r"(?u)\b\w\w+\b")
_HEAD_WORDS, _TAIL_WORDS = 256, 64
_CUE_CHARS = 1500
_DIGIT = re.compile(r"\d")
MAX_TURN = 20

# Lexical cues: a cue is on when any of its words occurs among the prompt's words.
CUE_WORDS: dict[str, frozenset[str]] = {
    name: frozenset(words.split())
    for name, words in {
        "summarize": "summarize summarise summary summarizing summarization tldr recap",
        "list": "list lists bullet bullets bulleted enumerate itemize",
        "long_form": "essay article blog story poem script chapter letter report speech",
        "translate": "translate translation translated translating",
        "how_why": "how why explain explanation describe",
        "write": "write writing generate create draft compose",
        "short": "short shorter brief briefly concise",
        "long": "detail detailed details long longer comprehensive elaborate thorough extensive",
        "rewrite": "rewrite rephrase paraphrase improve proofread correct fix edit revise",
        "table": "table tables tabular",
        "steps": "step steps",
        "example": "example examples",
    }.items()
}
# Cues on the first word only.
OPENING_WORDS: dict[str, frozenset[str]] = {
    "continue": frozenset(["continue", "go", "keep", "more"]),
    "wh_question": frozenset(
        [
            "what",
            "who",
            "when",
            "where",
            "which",
            "is",
            "are",
            "do",
            "does",
            "can",
            "could",
            "should",
            "would",
            "will",
        ]
    ),
    "ack": frozenset(["thanks", "thank", "ok", "okay", "great", "cool", "nice", "perfect", "good"]),
}
_CODE_MARKS = ("```", "{", "def ", "import ", ";\n", "</", "=>")
_WINDOW_HEAD, _WINDOW_TAIL = 3000, 600
DENSE_NAMES: tuple[str, ...] = (
    "log_prompt_tokens",
    "log_history_tokens",
    "log_last_reply_tokens",
    "log_mean_reply_tokens",
    "replies",
    "turn",
    "first_turn",
    "has_system",
    "log_chars",
    "log_lines",
    "digit_ratio",
    "non_ascii_ratio",
    "cue_code",
    "cue_question_end",
    *(f"cue_{name}" for name in CUE_WORDS),
    *(f"cue_{name}" for name in OPENING_WORDS),
)


@dataclass(frozen=True, slots=True)
class PromptInfo:
    """What the length model sees of one request."""

    prompt: str
    history_tokens: int = 0
    turn: int = 0
    has_system: bool = False
    max_tokens: int | None = None
    model: str | None = None
    # The assistant's earlier replies in the conversation: how many, the last one's length
    # and their mean length (a reply's length predicts the next one's well).
    replies: int = 0
    last_reply_tokens: int = 0
    mean_reply_tokens: float = 0.0


def approx_tokens(text: str) -> int:
    """A tokenizer-free count close to cl100k on English text (about 4 characters a token)."""
    return math.ceil(len(text) / 4)


def content_text(content: Any) -> str:
    """The text of an OpenAI message content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def info_from_request(body: Mapping[str, Any]) -> PromptInfo:
    """The PromptInfo of an OpenAI chat or completion request body."""
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    max_tokens = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
    model = body.get("model") if isinstance(body.get("model"), str) else None
    messages = body.get("messages")
    if isinstance(messages, list):
        turns = [m for m in messages if isinstance(m, dict)]
        user_indices = [i for i, m in enumerate(turns) if m.get("role") == "user"]
        last = user_indices[-1] if user_indices else len(turns) - 1
        prompt = content_text(turns[last].get("content")) if turns else ""
        sizes = [approx_tokens(content_text(m.get("content"))) for m in turns]
        history = sum(sizes) - (sizes[last] if turns else 0)
        replies = [sizes[i] for i in range(max(0, last)) if turns[i].get("role") == "assistant"]
        return PromptInfo(
            prompt=prompt,
            history_tokens=history,
            turn=max(0, len(user_indices) - 1),
            has_system=any(m.get("role") in ("system", "developer") for m in turns),
            max_tokens=max_tokens,
            model=model,
            **reply_fields(replies),
        )
    raw = body.get("prompt", "")
    prompt = " ".join(str(p) for p in raw) if isinstance(raw, list) else str(raw)
    return PromptInfo(prompt=prompt, max_tokens=max_tokens, model=model)


def reply_fields(replies: list[int]) -> dict[str, Any]:
    """The PromptInfo fields that describe the assistant's earlier replies (tokens each)."""
    if not replies:
        return {}
    return {
        "replies": len(replies),
        "last_reply_tokens": replies[-1],
        "mean_reply_tokens": sum(replies) / len(replies),
    }


def info_from_row(row: Mapping[str, Any]) -> PromptInfo:
    """The PromptInfo of a data-set row (ShareGPT-lengths format, or a recorded sample with
    its chat structure). A data-set row's earlier replies come from its conversation's earlier
    rows: see ``predictor.data``."""
    limit = row.get("max_tokens")
    model = row.get("model")
    return PromptInfo(
        prompt=str(row["prompt"]),
        history_tokens=int(row.get("history_tokens", 0)),
        turn=int(row.get("turn", 0)),
        has_system=bool(row.get("has_system", False)),
        max_tokens=int(limit) if limit is not None else None,
        model=str(model) if model is not None else None,
        replies=int(row.get("replies", 0)),
        last_reply_tokens=int(row.get("last_reply_tokens", 0)),
        mean_reply_tokens=float(row.get("mean_reply_tokens", 0.0)),
    )


def _hash(token: str) -> int:
    return zlib.crc32(token.encode("utf-8")) & _MASK


def prompt_words(prompt: str) -> list[str]:
    """Lower-cased words of the prompt's head and tail (long prompts are not read whole)."""
    if len(prompt) > _WINDOW_HEAD + _WINDOW_TAIL:
        prompt = prompt[:_WINDOW_HEAD] + " " + prompt[-_WINDOW_TAIL:]
    words = _WORD.findall(prompt.lower())
    if len(words) > _HEAD_WORDS + _TAIL_WORDS:
        words = words[:_HEAD_WORDS] + words[-_TAIL_WORDS:]
    return words


def text_features(words: list[str]) -> Counter[int]:
    """Hashed counts of word unigrams and bigrams."""
    counts: Counter[int] = Counter(_hash(w) for w in words)
    counts.update(_hash(f"{a} {b}") for a, b in pairwise(words))
    return counts


def dense_features(info: PromptInfo, words: list[str]) -> np.ndarray:
    text = info.prompt
    head = text[:_CUE_CHARS]
    window = max(1, len(head))
    vocabulary = set(words)
    opening = words[0] if words else ""
    values = [
        math.log1p(approx_tokens(text)),
        math.log1p(info.history_tokens),
        math.log1p(info.last_reply_tokens),
        math.log1p(info.mean_reply_tokens),
        float(min(info.replies, MAX_TURN)),
        float(min(info.turn, MAX_TURN)),
        1.0 if info.turn == 0 else 0.0,
        1.0 if info.has_system else 0.0,
        math.log1p(len(text)),
        math.log1p(text.count("\n")),
        len(_DIGIT.findall(head)) / window,
        (len(head) - len(head.encode("ascii", "ignore"))) / window,
        1.0 if any(mark in head for mark in _CODE_MARKS) else 0.0,
        1.0 if text.rstrip().endswith("?") else 0.0,
    ]
    values.extend(0.0 if vocabulary.isdisjoint(cue) else 1.0 for cue in CUE_WORDS.values())
    values.extend(1.0 if opening in cue else 0.0 for cue in OPENING_WORDS.values())
    return np.asarray(values, dtype=np.float64)


def featurize(info: PromptInfo) -> tuple[Counter[int], np.ndarray]:
    """Both feature groups of one request, reading the prompt once."""
    words = prompt_words(info.prompt)
    return text_features(words), dense_features(info, words)
