"""Prompt prefixes kept on engine rows, so a new prompt that starts the same way is not forwarded again.

A cached entry is a `Branch` the engine holds for the cache (not a caller's branch): its row keeps
the KV of a prompt prefilled earlier. `Engine.prefill` asks `match_prefix` for the entry sharing the
longest prefix with the new prompt, copies those columns into the new root's row and forwards only
the rest; then it `insert`s a copy of the new prompt. Entries are evicted least-recently-used first,
when the cache is over `capacity` or when the engine needs their rows for live branches. An entry
is only read inside the engine's synchronous row copy, so no caller ever holds one in use and no
reference counts are needed.

Rows are dense (token i at column i), so any entry whose tokens share the first n ids with a prompt
gives those n columns exactly: matching is a longest-common-prefix over the entries (a handful of
rows, so a scan is exact and cheap; a radix tree pays off only with many entries).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """Up to `capacity` cached prompt rows; a prefix shorter than `min_tokens` is not worth reusing."""

    def __init__(self, capacity: int, min_tokens: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"prefix_cache_rows={capacity!r} is out of range; accepted: an int >= 0 (0 = off)")
        if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 1:
            raise ValueError(f"prefix_min_tokens={min_tokens!r} is out of range; accepted: an int >= 1")
        self.capacity = capacity
        self.min_tokens = min_tokens
        self._entries: OrderedDict[int, object] = OrderedDict()  # id(branch) -> branch, oldest first

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, branch) -> bool:
        return id(branch) in self._entries

    @property
    def entries(self) -> list:
        return list(self._entries.values())

    def match_prefix(self, ids: Sequence[int]):
        """`(entry, n)`: the entry sharing the longest prefix with `ids` and that length, if
        n >= `min_tokens`; else `(None, 0)`. A hit becomes the most recently used."""
        best, best_n = None, 0
        for b in self._entries.values():
            n = common_prefix(b.tokens, ids)
            if n > best_n:
                best, best_n = b, n
        if best is None or best_n < self.min_tokens:
            return None, 0
        self._entries.move_to_end(id(best))
        return best, best_n

    def covers(self, ids: Sequence[int]) -> bool:
        """Whether an entry already holds all of `ids`."""
        return any(common_prefix(b.tokens, ids) == len(ids) for b in self._entries.values())

    def insert(self, branch) -> list:
        """Add `branch` as the most recent entry. Returns the entries evicted to stay within
        `capacity` (the engine frees their rows)."""
        self._entries[id(branch)] = branch
        return self.evict(len(self._entries) - self.capacity)

    def evict(self, n: int, keep: Sequence = ()) -> list:
        """Remove up to `n` entries, least recently used first, never one in `keep`; returns them."""
        spared = {id(b) for b in keep}
        victims = [k for k in self._entries if k not in spared][: max(n, 0)]
        return [self._entries.pop(k) for k in victims]
