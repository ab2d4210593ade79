"""Recently computed prompts kept in llama.cpp's KV cache, so that a prompt starting with them skips their
prefill: the earlier turns of a conversation, a shared system prompt, MT-bench's judge prompt.

When a sequence ends, its cells stay in the (unified) KV cache under its sequence id, which becomes an
entry here with the tokens those cells hold. A new prompt takes the entry sharing its longest prefix:
`llama_memory_seq_cp` adds the new sequence's id to those cells (no copy: cells of a unified cache can
belong to several sequences), and its prefill starts after them. Entries are bounded in number (the
spare sequence ids) and in cells, and the least recently used goes first; an entry is also dropped
whenever the running sequences need its cells.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_REUSE_TOKENS = 16  # a shorter common prefix is prefilled again: not worth an entry's bookkeeping


@dataclass
class Entry:
    seq_id: int
    tokens: np.ndarray  # what its cells hold, positions 0..len-1


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens `a` and `b` share (vectorized: this runs on the model thread)."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


class PrefixCache:
    def __init__(self, max_entries: int, max_cells: int):
        self.max_entries, self.max_cells = max_entries, max_cells
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # by seq id, least recently used first
        self.hits = self.reused_tokens = 0

    @property
    def cells(self) -> int:
        """An upper bound of the cells the entries hold (shared cells are counted once per entry)."""
        return sum(len(e.tokens) for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def best(self, prompt: Sequence[int], longer_than: int = 0) -> tuple[Entry, int] | None:
        """The entry sharing the longest prefix with `prompt`, and that length (at most len(prompt) - 1, so
        that the prompt's last token is decoded for its logits), or None below MIN_REUSE_TOKENS or at most
        `longer_than` (a running sequence offers that much)."""
        found, length = None, longer_than
        ids = np.asarray(prompt, dtype=np.int64)
        for entry in self._entries.values():
            n = min(common_prefix(entry.tokens, ids), len(ids) - 1)
            if n > length:
                found, length = entry, n
        if found is None or length < MIN_REUSE_TOKENS:
            return None
        self._entries.move_to_end(found.seq_id)
        self.hits += 1
        self.reused_tokens += length
        return found, length

    def add(self, seq_id: int, tokens: Sequence[int]) -> list[int]:
        """Keep `seq_id`'s cells as an entry; returns the seq ids evicted to stay within bounds (including
        `seq_id` itself when its tokens alone exceed them)."""
        if len(tokens) < MIN_REUSE_TOKENS or len(tokens) > self.max_cells or self.max_entries == 0:
            return [seq_id]
        self._entries[seq_id] = Entry(seq_id, np.asarray(tokens, dtype=np.int64))
        evicted = []
        while len(self._entries) > self.max_entries or self.cells > self.max_cells:
            evicted.append(self.pop_oldest())
        return evicted

    def pop_oldest(self) -> int:
        seq_id, _ = self._entries.popitem(last=False)
        return seq_id

    def clear(self) -> list[int]:
        ids = list(self._entries)
        self._entries.clear()
        return ids
