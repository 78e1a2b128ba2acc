"""Token samplers and stop rules.

Sampling is inverse-CDF on one uniform draw per branch per step from that branch's own generator,
so a branch's samples depend only on its seed and its logits, never on which other branches share
the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
        logits = logits.float() / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = torch.sort(probs, dim=-1, descending=True)
            before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass strictly above each token
            drop = torch.empty_like(before, dtype=torch.bool).scatter(-1, order, before >= self.top_p)
            probs = probs.masked_fill(drop, 0.0)
        if self.min_p > 0.0:
            probs = probs.masked_fill(probs < self.min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
        return probs / probs.sum(dim=-1, keepdim=True)

    def sample(self, logits: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """One token id per row of `logits` `[B, V]`; row i draws from `generators[i]`. Returns `[B]` int64."""
        if self.greedy:
            return logits.argmax(dim=-1)
        return self.draw(self.probs(logits), generators)

    def draw(self, probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """One token id per row of `probs` `[B, V]` (a `probs()` result; row i draws from
        `generators[i]`, one uniform per row). Returns `[B]` int64."""
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
        cdf = torch.cumsum(probs.double(), dim=-1)
        target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
        ids = torch.searchsorted(cdf, target, right=True).squeeze(-1)
        # searchsorted can land on a zero-probability tail token when u*total rounds to the total.
        ids = ids.clamp_max(probs.shape[-1] - 1)
        bad = probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1) == 0
        return torch.where(bad, probs.argmax(dim=-1), ids)  # no host sync to test `bad`


GREEDY = Sampler(temperature=0.0)


@dataclass(frozen=True)
class Stop:
    """When a branch stops decoding: an EOS id (not appended), a stop string in its new text
    (kept), or `max_new_tokens` (checked by `Engine.decode`). `eos_ids=None` means the model's."""

    eos_ids: frozenset[int] | None = None
    strings: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if isinstance(self.strings, str):
            raise ValueError("strings must be a sequence of stop strings, not one string")
        if any(not s for s in self.strings):
            raise ValueError("strings: stop strings must be non-empty")
        if self.eos_ids is not None:
            object.__setattr__(self, "eos_ids", frozenset(int(i) for i in self.eos_ids))
        object.__setattr__(self, "strings", tuple(self.strings))
