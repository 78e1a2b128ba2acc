"""Token sequences kept on engine rows, so a new prefill that starts the same way is not forwarded again.

A cached entry is a `Branch` the engine holds for the cache (not a caller's branch): its row keeps
the state of a sequence forwarded earlier, either a prompt (`Engine.prefill` inserts a copy of each
new prompt) or a branch a caller handed over (`Engine.release(branch, cache=True)`: a judge's
evaluated context, a search state it may come back to). `Engine.prefill` asks `match_prefix` for the
entry sharing the longest prefix with the new ids, copies those columns into the new root's row and
forwards only the rest (nothing when an entry holds all of them). Entries are evicted
least-recently-used first, when the unpinned ones are over `capacity` or when the engine needs
their rows for live branches.

Reference counts (`pin` / `unpin`): a pinned entry is never evicted and does not count against
`capacity`; a holder pins what it will come back to many times (a judge's few-shot block for the
length of a run) and unpins it when done. An entry is only read inside the engine's synchronous row
copy, so a match never needs a pin to stay valid while it is copied.

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
        self._pins: dict[int, int] = {}  # id(branch) -> pin count (> 0)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, branch) -> bool:
        return id(branch) in self._entries

    @property
    def entries(self) -> list:
        return list(self._entries.values())

    def match_prefix(self, ids: Sequence[int]):
        """`(entry, n)`: the entry sharing the longest prefix with `ids` and that length, if
        n >= `min_tokens` or n is all of `ids` (no forward at all); else `(None, 0)`. A hit becomes
        the most recently used."""
        best, best_n = None, 0
        for b in self._entries.values():
            n = common_prefix(b.tokens, ids)
            if n > best_n:
                best, best_n = b, n
        if best is None or best_n < min(self.min_tokens, len(ids)):
            return None, 0
        self._entries.move_to_end(id(best))
        return best, best_n

    def covering(self, ids: Sequence[int]):
        """An entry that holds all of `ids` (its tokens start with them), or None."""
        return next((b for b in self._entries.values() if common_prefix(b.tokens, ids) == len(ids)), None)

    def insert(self, branch, pin: bool = False) -> list:
        """Add `branch` as the most recent entry (pinned once with `pin`). Unpinned entries whose
        tokens are a prefix of its tokens go (it serves every prefix they serve). Returns the entries
        removed, with those evicted to keep the unpinned ones within `capacity` (the engine frees
        their rows)."""
        n = len(branch.tokens)
        covered = [k for k, b in self._entries.items()
                   if k not in self._pins and len(b.tokens) <= n and branch.tokens[: len(b.tokens)] == b.tokens]
        out = [self._entries.pop(k) for k in covered]
        self._entries[id(branch)] = branch
        if pin:
            self.pin(branch)
        return out + self.evict(len(self._entries) - len(self._pins) - self.capacity)

    def pin(self, entry) -> None:
        """Add one reference to `entry`: it is not evicted until every reference is `unpin`ned."""
        if id(entry) not in self._entries:
            raise ValueError(f"{entry!r} is not a prefix-cache entry")
        self._pins[id(entry)] = self._pins.get(id(entry), 0) + 1

    def unpin(self, entry) -> list:
        """Drop one reference to `entry`. Returns the entries evicted if the cache is now over `capacity`."""
        n = self._pins.get(id(entry), 0)
        if n == 0:
            raise ValueError(f"{entry!r} is not pinned")
        if n == 1:
            del self._pins[id(entry)]
        else:
            self._pins[id(entry)] = n - 1
        return self.evict(len(self._entries) - len(self._pins) - self.capacity)

    def pins(self, entry) -> int:
        """How many references hold `entry`."""
        return self._pins.get(id(entry), 0)

    def evict(self, n: int, keep: Sequence = ()) -> list:
        """Remove up to `n` unpinned entries, least recently used first, never one in `keep`; returns them."""
        spared = {id(b) for b in keep} | set(self._pins)
        victims = [k for k in self._entries if k not in spared][: max(n, 0)]
        return [self._entries.pop(k) for k in victims]
