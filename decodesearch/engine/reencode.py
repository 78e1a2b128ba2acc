"""`Reencode`: the engine's backend swapped for the way hand-rolled search loops (and the official
RAIN code) run: batch size 1, one private HF cache per branch that only grows; a fork or a rewind
is a cache miss, and a miss re-encodes the branch's whole sequence from scratch.

`Engine(model, tokenizer, backend=Reencode())` exists to measure what the engine saves
(benchmarks/) and as a plain oracle in tests; everything but the backend is the engine's (decode
loop, sampling, stop rules), so both produce the same tokens from the same seeds. The prefix cache
is off with it (`reuses_prefixes = False`): the baseline shares nothing between prompts either.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from decodesearch.engine.backend import Backend


class Reencode(Backend):
    """No KV sharing between branches or prompts, no batching: tokens are only recorded when
    encoded, and a branch's cache catches up (batch 1) when its logits are asked for.

    With `miss_on_extend=True` teacher-forced tokens (a prefill or an `extend`) are a cache miss too:
    the loop that calls `model.generate` afresh on the whole text for every segment.
    """

    reuses_prefixes = False

    def __init__(self, *, miss_on_extend: bool = False):
        self.miss_on_extend = bool(miss_on_extend)
        self._caches: dict[int, tuple[DynamicCache, torch.Tensor | None]] = {}  # id(branch) -> (cache, logits)

    def resize(self, rows, cols, keep) -> None:
        pass  # caches are per branch, not per row

    def encode(self, branches, ids, logprobs) -> None:
        if self.miss_on_extend:
            for b, lps in zip(branches, logprobs):
                if all(lp is None for lp in lps):
                    self._caches.pop(id(b), None)

    def copy(self, src, dsts, n) -> None:
        pass  # a child starts with no cache: its first use re-encodes its whole sequence

    def truncate(self, branch, n) -> None:
        self._caches.pop(id(branch), None)  # a rewind is a cache miss

    def logits(self, branches) -> torch.Tensor:
        eng = self.engine
        rows = []
        for b in branches:
            cache, logits = self._caches.get(id(b), (None, None))
            done = 0 if cache is None else cache.get_seq_length()
            if cache is None:
                cache = DynamicCache(config=eng.model.config)
            new = b.tokens[done:]
            if new:
                out = eng.model(input_ids=torch.tensor([new], device=eng.in_device), cache=cache, use_cache=True,
                                logits_to_keep=1)
                logits = out.logits[0, -1].float()
                self._caches[id(b)] = (cache, logits)
                eng.stats.tokens_forwarded += len(new)
                eng.stats.forward_calls += 1
            rows.append(logits)
        return torch.stack(rows)

    def free(self, branch) -> None:
        self._caches.pop(id(branch), None)
