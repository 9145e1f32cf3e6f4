"""What each backend is likely to hold in its prefix cache, from what this gateway sent it.

Approximate, as llm-d's approximate prefix scorer and SGLang's cache-aware router are: the
prompt's text is cut into chunks of ``CHUNK_CHARS`` characters, each named by a hash chained
on the one before (so a chunk counts only when everything before it matched too, as vLLM's
block hashes do). Per backend the index keeps the chunks it was sent, most recently used
last, bounded by the backend's KV capacity in chunks; the oldest go first, as vLLM evicts
its least recently used free blocks. A reply that reports its cached tokens
(``usage.prompt_tokens_details.cached_tokens``) corrects the bound: a backend that had
less than expected evicts sooner than assumed (its running requests hold part of its cache).
vLLM caches the blocks a reply fills as well as the prompt's, and a conversation's next turn
quotes the reply: so once a reply is complete its text joins the index too
(``answer_hashes``), and the next turn's match counts the reply's chunks as cached.

Per replica: with several replicas each knows what it sent (a load balancer that keeps a
conversation on one replica keeps its index whole); nothing here goes to Redis.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from predictor.features import content_text

CHUNK_CHARS = 256  # about 64 tokens of English text
CHARS_PER_TOKEN = 4  # the gateway's estimate (gateway.estimate reads the same)
DEFAULT_CAPACITY_CHUNKS = 4096  # a backend whose KV capacity is not known yet
MIN_CAPACITY_CHUNKS = 64


def prompt_text(body: Mapping[str, Any]) -> str:
    """The text a backend's prefix cache sees first: the conversation as sent."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for message in messages:
            if isinstance(message, dict):
                parts.append(f"<{message.get('role')}>{content_text(message.get('content'))}")
        return "\n".join(parts)
    prompt = body.get("prompt", "")
    return " ".join(str(p) for p in prompt) if isinstance(prompt, list) else str(prompt)


MAX_REPLY_CHARS = 1 << 20  # a reply longer than this is not indexed (nor held in memory)


class ReplyText:
    """A reply's text as it is relayed, kept only up to ``MAX_REPLY_CHARS``."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._chars = 0

    def add(self, text: str) -> None:
        if text and self._chars <= MAX_REPLY_CHARS:
            self._chars += len(text)
            self._parts.append(text)

    @property
    def text(self) -> str | None:
        """The whole text; None when it ran past the bound."""
        return "".join(self._parts) if self._chars <= MAX_REPLY_CHARS else None


def answer_hashes(body: Mapping[str, Any], reply: str) -> tuple[int, ...]:
    """The chunks of a conversation's prompt and the reply it got, as its next turn will
    send them (the reply as the assistant's message; a completion continues its prompt)."""
    if isinstance(body.get("messages"), list):
        return chunk_hashes(f"{prompt_text(body)}\n<assistant>{reply}")
    return chunk_hashes(prompt_text(body) + reply)


def chunk_hashes(text: str) -> tuple[int, ...]:
    """The chained hash of each full chunk of ``text`` (stable within a process)."""
    hashes: list[int] = []
    previous = 0
    for start in range(0, len(text) - CHUNK_CHARS + 1, CHUNK_CHARS):
        previous = hash((previous, text[start : start + CHUNK_CHARS]))
        hashes.append(previous)
    return tuple(hashes)


class PrefixIndex:
    def __init__(self) -> None:
        self._chunks: dict[str, OrderedDict[int, None]] = {}
        self._capacity: dict[str, int] = {}
        self.version = 0  # bumped on every change: callers cache lookups against it
        self._stamps: dict[str, int] = {}  # backend -> the version of its last change

    def set_capacity(self, backend: str, kv_tokens: int | None) -> None:
        chunks = (
            DEFAULT_CAPACITY_CHUNKS
            if kv_tokens is None
            else max(1, kv_tokens * CHARS_PER_TOKEN // CHUNK_CHARS)
        )
        if self._capacity.get(backend) != chunks:
            self._capacity[backend] = chunks
            self._trim(backend)

    def matched(self, backend: str, hashes: Sequence[int]) -> int:
        """How many leading chunks of ``hashes`` the backend is likely to hold."""
        held = self._chunks.get(backend)
        if not held:
            return 0
        count = 0
        for h in hashes:
            if h not in held:
                break
            count += 1
        return count

    def cached_on(self, backend: str, hashes: Sequence[int], prompt_tokens: int) -> int:
        """The prompt tokens likely cached on ``backend``."""
        count = self.matched(backend, hashes) if hashes else 0
        if not count:
            return 0
        share = count * CHUNK_CHARS / (len(hashes) * CHUNK_CHARS + CHUNK_CHARS // 2)
        return min(prompt_tokens - 1, int(prompt_tokens * share))

    def cached_tokens(self, hashes: Sequence[int], prompt_tokens: int) -> dict[str, int]:
        """Per backend holding any of it, the prompt tokens likely cached there."""
        out: dict[str, int] = {}
        for backend in self._chunks:
            tokens = self.cached_on(backend, hashes, prompt_tokens)
            if tokens:
                out[backend] = tokens
        return out

    def changed_since(self, version: int) -> list[str]:
        """The backends whose index changed after ``version``."""
        return [backend for backend, stamp in self._stamps.items() if stamp > version]

    def retain(self, backends: Collection[str]) -> None:
        """Forget the backends not among ``backends`` (they left the fleet)."""
        for backend in [b for b in self._chunks if b not in backends]:
            del self._chunks[backend]
            self._capacity.pop(backend, None)
            self._changed(backend)

    def record(self, backend: str, hashes: Sequence[int]) -> None:
        """The prompt went to ``backend``: its chunks are there now, the most recent."""
        if not hashes:
            return
        held = self._chunks.setdefault(backend, OrderedDict())
        for h in hashes:
            held[h] = None
            held.move_to_end(h)
        self._trim(backend)
        self._changed(backend)

    def correct(self, backend: str, expected: int, reported: int) -> None:
        """The backend reported ``reported`` cached prompt tokens where the index expected
        ``expected``: well short means it evicts sooner than the index assumed, so the
        index's bound for it shrinks to what it holds less a tenth (it regrows as the
        backend's reports meet what the index expects)."""
        if expected <= 0:
            return
        held = len(self._chunks.get(backend, ()))
        capacity = self._capacity.get(backend, DEFAULT_CAPACITY_CHUNKS)
        if reported < 0.9 * expected:
            self._capacity[backend] = max(MIN_CAPACITY_CHUNKS, int(held * 0.9))
            self._trim(backend)
            self._changed(backend)
        elif held >= capacity:
            self._capacity[backend] = capacity + max(1, capacity // 20)

    def size(self, backend: str) -> int:
        return len(self._chunks.get(backend, ()))

    def _trim(self, backend: str) -> None:
        held = self._chunks.get(backend)
        capacity = self._capacity.get(backend, DEFAULT_CAPACITY_CHUNKS)
        if held and len(held) > capacity:
            while len(held) > capacity:
                held.popitem(last=False)
            self._changed(backend)

    def _changed(self, backend: str) -> None:
        self.version += 1
        self._stamps[backend] = self.version
