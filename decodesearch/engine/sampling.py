"""Token samplers and stop rules.

Sampling is inverse-CDF on one uniform draw per branch per step from that branch's own generator,
so a branch's samples depend only on its seed and its logits, never on which other branches share
the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Sequence

import torch


def _check_range(name: str, value: float, lo: float, hi: float, lo_open: bool = False) -> None:
    ok = (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        raise ValueError(f"{name}={value!r} is out of range; accepted: {bracket}{lo}, {hi}]")


@dataclass(frozen=True)
class Sampler:
    """Next-token choice. `temperature=0` is greedy; filters apply in the order top-k, top-p, min-p."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    def __post_init__(self):
        _check_range("temperature", self.temperature, 0.0, float("inf"))
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r} is out of range; accepted: an int >= 0 (0 = off)")
        _check_range("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        _check_range("min_p", self.min_p, 0.0, 1.0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Filtered next-token distribution, `[B, V]` fp32 (rows sum to 1)."""
        return filtered_probs(logits, [self] * logits.shape[0])

    def sample(self, logits: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """One token id per row of `logits` `[B, V]`; row i draws from `generators[i]`. Returns `[B]` int64."""
        return sample_rows(logits, [self] * logits.shape[0], generators)


GREEDY = Sampler(temperature=0.0)


def filtered_probs(logits: torch.Tensor, samplers: Sequence[Sampler]) -> torch.Tensor:
    """Row i's filtered distribution under `samplers[i]`, `[B, V]` fp32, for all rows at once
    (per-row temperature, top-k, top-p, min-p as tensors; no loop over rows). A greedy row is
    filtered at temperature 1. Each row's result does not depend on the other rows."""
    B, V = logits.shape
    dev = logits.device
    temp = torch.tensor([s.temperature or 1.0 for s in samplers], device=dev, dtype=torch.float32)
    x = logits.float() / temp[:, None]
    ks = [s.top_k if s.top_k < V else 0 for s in samplers]
    if any(ks):
        kmax = max(ks)
        k = torch.tensor([max(kk, 1) for kk in ks], device=dev)
        kth = torch.topk(x, kmax, dim=-1).values.gather(-1, (k - 1)[:, None])
        kth = torch.where(torch.tensor(ks, device=dev)[:, None] > 0, kth, torch.full_like(kth, float("-inf")))
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    if any(s.top_p < 1.0 for s in samplers):
        top_p = torch.tensor([s.top_p if s.top_p < 1.0 else 2.0 for s in samplers], device=dev)  # 2: never drops
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass strictly above each token
        drop = torch.empty_like(before, dtype=torch.bool).scatter(-1, order, before >= top_p[:, None])
        probs = probs.masked_fill(drop, 0.0)
    if any(s.min_p > 0.0 for s in samplers):
        min_p = torch.tensor([s.min_p for s in samplers], device=dev)
        probs = probs.masked_fill(probs < min_p[:, None] * probs.max(dim=-1, keepdim=True).values, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


def draw(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token id per row of `probs` `[B, V]` (a `filtered_probs` result; row i draws from
    `generators[i]`, one uniform per row). Returns `[B]` int64."""
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    cdf = torch.cumsum(probs.double(), dim=-1)
    target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    ids = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    # searchsorted can land on a zero-probability tail token when u*total rounds to the total.
    ids = ids.clamp_max(probs.shape[-1] - 1)
    bad = probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1) == 0
    return torch.where(bad, probs.argmax(dim=-1), ids)  # no host sync to test `bad`


def sample_rows(logits: torch.Tensor, samplers: Sequence[Sampler],
                generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One token id per row of `logits` `[B, V]`, row i under `samplers[i]` drawing from
    `generators[i]` (None for greedy rows). Returns `[B]` int64."""
    picked = logits.argmax(dim=-1)
    drawn = [i for i, s in enumerate(samplers) if not s.greedy]
    if drawn:
        if len(drawn) == len(samplers):
            return draw(filtered_probs(logits, samplers), list(generators))
        idx = torch.tensor(drawn, device=logits.device)
        probs = filtered_probs(logits[idx], [samplers[i] for i in drawn])
        picked[idx] = draw(probs, [generators[i] for i in drawn])
    return picked


class StopReason(str, Enum):
    """Why a branch stopped decoding. A `str`, so it compares equal to (and serialises as) its value."""

    EOS = "eos"  # an EOS id was picked (not appended)
    STOP_STRING = "stop_string"  # a stop string or boundary of the `Stop` rule (kept)
    LENGTH = "length"  # `max_new_tokens` reached
    CONTEXT = "context"  # the model's context length reached

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Stop:
    """When a branch stops decoding: an EOS id (not appended), a stop string in its text (kept), a
    clause boundary that its new text ends with (kept), or `max_new_tokens` (checked by
    `Engine.decode`). `eos_ids=None` means the model's.

    `strings` are matched in the new tokens, after the `preceding` tokens (e.g. the response
    before this decode, so a string that spans the two is found; never the prompt). `boundaries`
    (e.g. ".", "\\n") stop a branch whose new text, without trailing spaces and tabs, ends with one.
    """

    eos_ids: frozenset[int] | None = None
    strings: tuple[str, ...] = field(default_factory=tuple)
    boundaries: tuple[str, ...] = field(default_factory=tuple)
    preceding: tuple[int, ...] = field(default_factory=tuple)

    def hit(self, tokenizer, new_tokens: Sequence[int]) -> bool:
        """Whether a stop string occurs in the last tokens of `preceding + new_tokens` (a window of
        the longest string's length + 2 tokens), or the new text ends with a boundary."""
        if self.strings:
            window = max(map(len, self.strings)) + 2
            tail = list(new_tokens[-window:])
            if len(tail) < window and self.preceding:
                tail = list(self.preceding[len(tail) - window:]) + tail
            text = tokenizer.decode(tail, skip_special_tokens=False)
            if any(s in text for s in self.strings):
                return True
        if self.boundaries and new_tokens:
            longest = max(map(len, self.boundaries))
            text = tokenizer.decode(list(new_tokens[-(longest + 8):]), skip_special_tokens=True).rstrip(" \t")
            if len(text) < longest and len(new_tokens) > longest + 8:  # a whitespace run: read it all
                text = tokenizer.decode(list(new_tokens), skip_special_tokens=True).rstrip(" \t")
            return any(text.endswith(b) for b in self.boundaries) if text else False
        return False

    def __post_init__(self):
        for name in ("strings", "boundaries"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"{name} must be a sequence of strings, not one string")
            if any(not isinstance(s, str) or not s for s in value):
                raise ValueError(f"{name}: each entry must be a non-empty string")
            object.__setattr__(self, name, tuple(value))
        if self.eos_ids is not None:
            object.__setattr__(self, "eos_ids", frozenset(int(i) for i in self.eos_ids))
        object.__setattr__(self, "preceding", tuple(int(t) for t in self.preceding))
