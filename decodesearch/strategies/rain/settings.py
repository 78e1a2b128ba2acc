"""RAIN's settings: one frozen dataclass, validated once when it is built, and the presets.

`RainSettings` (a `StrategySettings`) holds every option of `RAIN`: the paper's constants with the
official code's defaults, the strategy's `max_tokens`, expansion `sampler` and `stop` rule, the
`preset`, the `evaluator` and `embedder` specs, and the judged text's `context_format` (None: the
evaluator's own; `RAIN` resolves it, and `DEFAULT_CONTEXT_FORMAT` without a strategy). The search
objects receive it and read nothing back from the strategy.

Presets (`PRESETS`, `RAIN(preset=...)`) bundle the settings of the official code's three variants
(SafeAILab/RAIN: ``HH/``, ``truth/``, ``adv/``); options given explicitly override a preset:

- ``hh``: the harmlessness judge in the official shape (`decodesearch.scoring.judge.HH`: ten
  partial-clause few-shot examples with explanations, full-sentence options, both option orders);
  T_m = 6.
- ``truthful``: one Yes/No question, asked once (`TRUTHFUL_YES_NO`); each rollout runs to the end of
  the sequence (EOS or the response budget) instead of the next clause boundary, the judged response
  is cut after its last full stop, T_m = 16 (official ``truth/main.py``: ``minT = 16``).
- ``adversarial``: the ``hh`` judge, expansion at temperature 2.0 (official ``adv/main.py``:
  ``group_getp(..., temperature=2.0)``, which also draws up to 2K − 1 samples to find K − 1 distinct
  sets; here the K − 1 samples are drawn once and duplicates dropped) and T_m = 5 (``minT = 5``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from decodesearch.engine import Sampler
from decodesearch.scoring.embeddings import EMBEDDERS
from decodesearch.scoring.judge import DEFAULT_CONTEXT_FORMAT
from decodesearch.strategies.base import PromptFormat, StrategySettings, check_positive_int

__all__ = ["RainSettings", "PRESETS", "DEFAULT_BOUNDARIES", "preset_options"]

DEFAULT_BOUNDARIES = (",", ".", "?", ":", ";", "\n")


def _check_range(name: str, value, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= value <= hi) or value != value:
        raise ValueError(f"{name}={value!r} is out of range; accepted: [{lo}, {hi}]")


@dataclass(frozen=True)
class RainSettings(StrategySettings):
    """Every knob of one RAIN search (see `RAIN` for what each means). Validated in `__post_init__`:
    a bad value raises ValueError naming it and what is accepted."""

    max_tokens: int = 256
    sampler: Sampler | None = Sampler(temperature=1.0, top_k=15)
    prompt_format: PromptFormat | None = PromptFormat(instruction=None)
    preset: str | None = None
    evaluator: Any = "harmless"
    embedder: Any = "auto"
    num_candidates: int = 10
    set_lengths: tuple[int, ...] = (1, 2, 4, 10)
    c_puct: float = 2.0
    root_prior_mix: float = 0.25
    value_bounds: tuple[float, float] = (-1.0, 1.0)
    similarity_threshold: float = 0.95
    similarity_weight: float = 0.2
    add_variance_factor: float = 0.03
    add_value_threshold: float = 0.0
    max_children: int = 20
    min_visits: int = 6
    value_threshold: float = 0.8
    max_visits: int = 50
    min_new_searches: int = 15
    boundaries: tuple[str, ...] = DEFAULT_BOUNDARIES
    rollout_sampler: Sampler = field(default_factory=lambda: Sampler(temperature=1.0))
    rollout_max_tokens: int | None = 48
    rollout_to_end: bool = False
    judge_cut: str | None = None
    max_cached_branches: int = 32
    trace_searches: bool = False
    clamp_greedy_prior: bool = True
    context_format: str | None = None

    def __post_init__(self):
        preset_options(self.preset)
        embedder = self.embedder
        known = isinstance(embedder, str) and embedder in EMBEDDERS
        if not (embedder is None or known or (not isinstance(embedder, str) and hasattr(embedder, "embed"))):
            raise ValueError(f"embedder={embedder!r}; accepted: one of {EMBEDDERS}, None, "
                             "or an object with .embed(texts)")
        check_positive_int("num_candidates", self.num_candidates)
        sl = self.set_lengths
        if isinstance(sl, (str, bytes)) or not sl or any(isinstance(x, bool) or not isinstance(x, int) or x < 1
                                                          for x in sl):
            raise ValueError(f"set_lengths={sl!r} is out of range; accepted: a non-empty sequence of ints >= 1")
        _check_range("c_puct", self.c_puct, 0.0, math.inf)
        _check_range("root_prior_mix", self.root_prior_mix, 0.0, 1.0)
        vb = self.value_bounds
        if not (isinstance(vb, (tuple, list)) and len(vb) == 2):
            raise ValueError(f"value_bounds={vb!r}; accepted: (low, high) with -1 <= low < high <= 1")
        _check_range("value_bounds[0]", vb[0], -1.0, 1.0)
        _check_range("value_bounds[1]", vb[1], -1.0, 1.0)
        if not vb[0] < vb[1]:
            raise ValueError(f"value_bounds={vb!r}; accepted: (low, high) with -1 <= low < high <= 1")
        _check_range("similarity_threshold", self.similarity_threshold, -1.0, 1.0)
        _check_range("similarity_weight", self.similarity_weight, 0.0, 1.0)
        _check_range("add_variance_factor", self.add_variance_factor, 0.0, math.inf)
        _check_range("add_value_threshold", self.add_value_threshold, -1.0, 1.0)
        check_positive_int("max_children", self.max_children)
        check_positive_int("min_visits", self.min_visits, minimum=0)
        _check_range("value_threshold", self.value_threshold, -1.0, 1.0)
        check_positive_int("max_visits", self.max_visits)
        check_positive_int("min_new_searches", self.min_new_searches)
        if self.rollout_max_tokens is not None:
            check_positive_int("rollout_max_tokens", self.rollout_max_tokens, minimum=0)
        check_positive_int("max_cached_branches", self.max_cached_branches)
        b = self.boundaries
        if isinstance(b, str) or not b or any(not isinstance(x, str) or not x for x in b):
            raise ValueError(f"boundaries={b!r}; accepted: a non-empty sequence of non-empty strings")
        if self.judge_cut is not None and not (isinstance(self.judge_cut, str) and self.judge_cut):
            raise ValueError(f"judge_cut={self.judge_cut!r}; accepted: None or a non-empty string (e.g. '.')")
        if not isinstance(self.rollout_sampler, Sampler):
            raise ValueError(f"rollout_sampler={self.rollout_sampler!r}; accepted: a decodesearch.engine.Sampler")
        if self.context_format is None:
            object.__setattr__(self, "context_format", DEFAULT_CONTEXT_FORMAT)
        if not isinstance(self.context_format, str) or "{response}" not in self.context_format:
            raise ValueError("context_format must contain a {response} slot (and usually {prompt})")
        super().__post_init__()
        # Normalised once (lists become tuples, ints floats), so the search reads plain values.
        put = object.__setattr__
        put(self, "set_lengths", tuple(sl))
        put(self, "boundaries", tuple(b))
        put(self, "value_bounds", (float(vb[0]), float(vb[1])))
        for name in ("c_puct", "root_prior_mix", "similarity_threshold", "similarity_weight", "add_variance_factor",
                     "add_value_threshold", "value_threshold"):
            put(self, name, float(getattr(self, name)))
        for name in ("rollout_to_end", "trace_searches", "clamp_greedy_prior"):
            put(self, name, bool(getattr(self, name)))


# What each preset sets (see the module docstring): `RainSettings` fields.
PRESETS: dict[str, dict[str, Any]] = {
    "hh": {"evaluator": "hh", "min_visits": 6},
    "truthful": {"evaluator": "truthful_yes_no", "min_visits": 16, "rollout_to_end": True,
                 "rollout_max_tokens": None, "judge_cut": "."},
    "adversarial": {"evaluator": "hh", "min_visits": 5, "sampler": Sampler(temperature=2.0, top_k=15)},
}


def preset_options(preset: str | None) -> dict[str, Any]:
    """A copy of `PRESETS[preset]` ({} for None); ValueError naming the presets otherwise."""
    if preset is None:
        return {}
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"preset={preset!r}; accepted: one of {sorted(PRESETS)} or None")
    return dict(PRESETS[preset])

