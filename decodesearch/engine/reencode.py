"""`ReencodeEngine`: the Engine API run the way hand-rolled search loops (and the official RAIN
code) run: batch size 1, one private HF cache per branch that only grows; a fork or a rewind is
a cache miss, and a miss re-encodes the branch's whole sequence from scratch.

It exists to measure what the engine saves (benchmarks/) and as a plain oracle in tests; it shares
`Engine`'s decode loop, sampling and stop rules, so both produce the same tokens from the same seeds.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache

from decodesearch.engine.engine import Branch, Engine


class ReencodeEngine(Engine):
    """Same operations and stats as `Engine`; no KV sharing between branches or prompts, no batching.

    With `miss_on_extend=True` an `extend` is a cache miss too: the loop that calls
    `model.generate` afresh on the whole text for every segment.
    """

    def __init__(self, model, tokenizer, *, miss_on_extend: bool = False, **kwargs):
        kwargs.setdefault("prefix_cache_rows", 0)  # the baseline shares nothing between prompts either
        super().__init__(model, tokenizer, **kwargs)
        self.miss_on_extend = miss_on_extend

    def _copy_state(self, branch: Branch, children: list[Branch]) -> None:
        pass  # a child starts with no cache: its first use re-encodes its whole sequence

    def _drop_columns(self, branch: Branch, n: int) -> None:
        branch._reencode_cache = None  # a rewind is a cache miss

    def _forward(self, branches, ids, logprobs=None) -> None:
        # Tokens are only recorded here; they are encoded lazily when logits are needed. Teacher-forced
        # tokens (no log-probs: a prefill or an `extend`) are a cache miss with `miss_on_extend`.
        for i, (b, x) in enumerate(zip(branches, ids)):
            lps = [None] * len(x) if logprobs is None else logprobs[i]
            if self.miss_on_extend and all(lp is None for lp in lps):
                b._reencode_cache = None
            b.tokens.extend(x)
            b.token_logprobs.extend(lps)

    def _logits(self, bs: Sequence[Branch]) -> torch.Tensor:
        rows = []
        for b in bs:
            cache = getattr(b, "_reencode_cache", None)
            done = 0 if cache is None else cache.get_seq_length()
            if cache is None:
                cache = DynamicCache(config=self.model.config)
            new = b.tokens[done:]
            if new:
                out = self.model(
                    input_ids=torch.tensor([new], device=self._in_device), cache=cache, use_cache=True, logits_to_keep=1
                )
                b._reencode_cache, b._reencode_logits = cache, out.logits[0, -1].float()
                self.stats.tokens_forwarded += len(new)
                self.stats.forward_calls += 1
            rows.append(b._reencode_logits)
        return torch.stack(rows)

    def _free(self, b: Branch) -> None:
        b._reencode_cache = None
        super()._free(b)
