"""Automatic prefix caching as vLLM does it, for the simulated engine.

A prompt's token ids are cut into blocks of ``block_size``; each full block is named by a
hash chained on the previous block's, so a block is reused only when everything before it
matches too. Blocks in use by running requests are counted once however many share them; a
finished request's blocks stay cached, free, until space is needed, and then the least
recently used go first. The token ids come from the text (``token_ids``): the same words
give the same ids in every process, so a repeated prefix hits wherever it went before.
"""

from __future__ import annotations

import re
import zlib
from collections import OrderedDict
from collections.abc import Sequence

_WORD = re.compile(r"\w+|[^\w\s]")
ROOT = 0x5EED


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
    hashes: list[int] = []
    previous = ROOT
    for start in range(0, len(ids) - block_size + 1, block_size):
        previous = hash((previous, *ids[start : start + block_size]))
        hashes.append(previous)
    return tuple(hashes)


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
