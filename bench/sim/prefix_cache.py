"""Automatic prefix caching as vLLM does it, for the simulated engine.

A prompt's token ids are cut into blocks of ``block_size``; each full block is named by a
hash chained on the previous block's, so a block is reused only when everything before it
matches too. Blocks in use by running requests are counted once however many share them; a
finished request's blocks stay cached, free, until space is needed, and then the least
recently used go first. As in vLLM, a block is cached as soon as it is computed, so a
request arriving while another with the same prefix still runs shares its blocks, and the
blocks of generated tokens are cached too: the next turn of a conversation, whose prompt is
the last one's plus its reply, hits both. The token ids come from the text (``token_ids``):
the same words give the same ids in every process, so a repeated prefix hits wherever it went
before; the simulator's replies are ``reply_text``, whose ids are ``reply_id``.
"""

from __future__ import annotations

import re
import zlib
from collections import OrderedDict
from collections.abc import Sequence

_WORD = re.compile(r"\w+|[^\w\s]")
ROOT = 0x5EED
# The simulated engine's replies: these words in turn, a token each.
VOCAB = ("the", "a", "model", "token", "of", "and", "to", "in", "serve", "latency", "is", "fast")
_VOCAB_IDS = tuple(zlib.crc32(word.encode("utf-8")) for word in VOCAB)


def reply_text(tokens: int) -> str:
    """The text of a simulated reply of ``tokens`` tokens."""
    return " ".join(VOCAB[i % len(VOCAB)] for i in range(tokens))


def reply_id(index: int) -> int:
    """The token id of a simulated reply's ``index``-th token (``token_ids`` of its word)."""
    return _VOCAB_IDS[index % len(_VOCAB_IDS)]


def token_ids(text: str, length: int | None = None) -> list[int]:
    """Stable ids of the text's words and marks; with ``length``, the sequence cut or
    extended (cycling, each lap distinct) to that many tokens."""
    ids = [zlib.crc32(word.encode("utf-8")) for word in _WORD.findall(text)] or [0]
    if length is None or length == len(ids):
        return ids
    if length < len(ids):
        return ids[:length]
    return [ids[i % len(ids)] ^ (i // len(ids)) for i in range(length)]


def block_hashes(ids: Sequence[int], block_size: int) -> tuple[int, ...]:
    """The chained hash of each full block of ``ids``."""
    return split_blocks(ids, block_size)[0]


def split_blocks(ids: Sequence[int], block_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(the chained hash of each full block of ``ids``, the ids after the last full one)."""
    hashes: list[int] = []
    previous = ROOT
    full = len(ids) - len(ids) % block_size
    for start in range(0, full, block_size):
        previous = next_block(previous, ids[start : start + block_size])
        hashes.append(previous)
    return tuple(hashes), tuple(ids[full:])


def next_block(previous: int, ids: Sequence[int]) -> int:
    """The hash of a full block of ``ids`` after the block hashed ``previous`` (``ROOT``
    before the first)."""
    return hash((previous, *ids))


class PrefixCache:
    """Cached KV blocks by hash: those in use (with a count of requests holding each) and
    the free ones, least recently used first."""

    def __init__(self) -> None:
        self._in_use: dict[int, int] = {}
        self._free: OrderedDict[int, None] = OrderedDict()

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    @property
    def free(self) -> int:
        return len(self._free)

    def match(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` are cached."""
        count = 0
        for h in hashes:
            if h not in self._in_use and h not in self._free:
                break
            count += 1
        return count

    def adopt(self, hashes: Sequence[int]) -> int:
        """A running request computed these blocks: they are cached now, held by it. Stops at
        the first one cached already (another request computed it meanwhile: this request's
        copy stays its own); returns how many it adopted."""
        count = 0
        for h in hashes:
            if h in self._in_use or h in self._free:
                break
            self._in_use[h] = 1
            count += 1
        return count

    def acquire(self, hashes: Sequence[int]) -> None:
        """Hold these cached blocks for a request (they stop being evictable)."""
        for h in hashes:
            if h in self._free:
                del self._free[h]
                self._in_use[h] = 1
            else:
                self._in_use[h] = self._in_use.get(h, 0) + 1

    def release(self, held: Sequence[int], computed: Sequence[int]) -> None:
        """A request let go of the blocks it ``held`` from the cache, and gives it the full
        blocks it ``computed`` itself; unheld blocks become free, most recently used."""
        for h in held:
            count = self._in_use.get(h, 0) - 1
            if count > 0:
                self._in_use[h] = count
            else:
                self._in_use.pop(h, None)
                self._free[h] = None
                self._free.move_to_end(h)
        for h in computed:
            if h in self._in_use:
                continue  # another request computed the same block meanwhile
            self._free[h] = None
            self._free.move_to_end(h)

    def evict(self, count: int) -> None:
        """Drop the ``count`` least recently used free blocks."""
        for _ in range(min(count, len(self._free))):
            self._free.popitem(last=False)
