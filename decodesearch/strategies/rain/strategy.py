"""The RAIN strategy front: options and presets -> `RainSettings`, the evaluator and embedder, row
accounting for the scheduler, and the outer loop (search, commit, repeat) with its trace."""

from __future__ import annotations

from typing import Any, Callable

import torch

from decodesearch.engine import Branch, Engine
from decodesearch.engine.scheduler import SearchEngine
from decodesearch.scoring.answers import extract_answer
from decodesearch.scoring.embeddings import make_embedder
from decodesearch.scoring.judge import DEFAULT_CONTEXT_FORMAT, as_evaluator
from decodesearch.strategies.base import Sample, SearchResult, Strategy
from decodesearch.strategies.trace import CommitEvent, DoneEvent, EngineStatsEvent, Event

from .search import RainSearch, judge_rows
from .settings import RainSettings, preset_options

__all__ = ["RAIN"]


class RAIN(Strategy):
    """RAIN search (see `decodesearch.strategies.rain`). Every constant of the paper is a knob with
    the paper's (official code's) default; they form one frozen `RainSettings` (``self.settings``,
    read as attributes too: ``rain.max_visits``; ``rain.evaluator`` is the evaluator built from
    ``settings.evaluator``):

    - `num_candidates` K = 10 children per expansion; `set_lengths` (1, 2, 4, 10) token-set lengths
      by depth; `sampler` the expansion distribution (top-15, T = 1), its greedy token set first;
      `clamp_greedy_prior` (on, as the official code) clamps the greedy set's joint probability.
    - `c_puct` c = 2; `root_prior_mix` ε = 0.25; `value_bounds` (-1, 1): the initial min/max of q̂'s
      normalisation (they widen if a q leaves them).
    - `similarity_threshold` 0.95, `similarity_weight` 0.2; `embedder` ``"auto"``/``"minilm"``
      (all-MiniLM-L6-v2; an error saying how to install it when missing), ``"lm"`` (opt-in: the LM's
      mean hidden state, on which the thresholds mean little), an object with ``embed(texts)``, or
      None (no similarity update, no dynamic addition).
    - `add_variance_factor` 0.03, `add_value_threshold` 0.0, `max_children` 20 (dynamic addition).
    - `min_visits` T_m = 6, `value_threshold` V = 0.8, `max_visits` T = 50, `min_new_searches` 15.
    - `boundaries` ``, . ? : ;`` newline; `rollout_sampler` (T = 1, unfiltered);
      `rollout_max_tokens` 48 (not in the paper: a cap on each rollout; None: the response budget);
      `rollout_to_end` (off): roll out to EOS or the response budget instead of the next boundary.
    - `evaluator`: ``"harmless"`` (short HH self-judge), ``"hh"`` (the official shape),
      ``"truthful"``, ``"truthful_yes_no"``, ``"math_step"``, a `JudgeTemplate` or `SelfJudge`, or a
      callable text -> score in [-1, 1]. `context_format` (slots ``{prompt}``, ``{response}``): the
      judged text; default: the evaluator's own, else ``Human: ... Assistant: ...``. `judge_cut`
      (None): cut the judged response after its last occurrence of this string (e.g. ``"."``).
    - `preset`: ``"hh"``, ``"truthful"`` or ``"adversarial"`` (`settings.PRESETS`): the official
      variants' settings; options given explicitly override the preset's.
    - `max_tokens` bounds the committed response (default 256); `trace_searches` adds one trace
      event per search; `max_cached_branches` bounds the node states the tree keeps pinned in the engine's prefix cache.
    """

    name = "rain"
    settings_class = RainSettings

    def __init__(self, *, progress: Callable[[int, int], None] | None = None, **options):
        if options.get("sampler") is None:
            options.pop("sampler", None)  # None: the preset's sampler, else the default
        self._context_format_given = options.get("context_format") is not None
        self._embedders: dict[tuple[str, int], Any] = {}
        super().__init__(progress=progress, **{**preset_options(options.get("preset")), **options})

    def settings_changed(self, old) -> None:
        """Build the evaluator from `settings.evaluator` (again when it changes); without a
        `context_format` of the caller's the judged text takes the evaluator's own."""
        s = self.settings
        if old is not None and old.evaluator == s.evaluator:
            return
        self._evaluator = as_evaluator(s.evaluator, s.context_format if self._context_format_given else None)
        if not self._context_format_given:
            self.context_format = getattr(self._evaluator, "context_format", DEFAULT_CONTEXT_FORMAT)

    @property
    def evaluator(self):
        """The evaluator built from `settings.evaluator` (a preset's, else ``"harmless"``)."""
        return self._evaluator

    def prior_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The expansion distribution `[B, V]` whose probabilities make the priors (the sampler's
        filtered distribution; plain softmax when the sampler is greedy)."""
        if self.sampler.greedy:
            return torch.softmax(logits.float(), dim=-1)
        return self.sampler.probs(logits)

    def embedder_for(self, engine: Engine):
        """The resolved embedder for `engine`'s model (built once per spec and model), or None."""
        spec = self.embedder
        if spec is None or not isinstance(spec, str):
            return spec
        key = (spec, id(engine.model))
        if key not in self._embedders:
            self._embedders[key] = make_embedder(spec, engine.model, engine.tokenizer)
        return self._embedders[key]

    def judge_rows(self) -> int:
        """Rows the evaluator may hold at once during one evaluation (its `rows_needed`), + 1."""
        return judge_rows(self.evaluator)

    def peak_rows(self, max_rows: int) -> int:
        """At least the K candidates, the root, the leaf, one spare and the evaluator's rows; the tree
        pins up to `max_cached_branches` node states in the prefix cache where `max_rows` leaves room (a
        search drops pins to stay within its rows, so lower `max_cached_branches` to run more RAIN
        searches at once)."""
        s = self.settings
        need = s.num_candidates + 3 + self.judge_rows()
        if max_rows < need:
            raise ValueError(f"engine.max_rows={max_rows} is too small for RAIN with num_candidates="
                             f"{s.num_candidates}: it needs at least {need} rows (K candidates + the judge's "
                             "rows + root, leaf and a spare)")
        return min(max_rows, max(need, max(s.max_cached_branches, s.num_candidates + 2) + self.judge_rows()))

    def shared_judge(self):
        return self.evaluator

    async def search(self, engine: SearchEngine, root: Branch, prompt: str) -> SearchResult:
        trace: list[Event] = []
        embedder = self.embedder_for(engine.engine)
        state = RainSearch(self.settings, engine, root, prompt, self.evaluator, embedder)
        try:
            commits = 0
            while state.done is None:
                before = dict(state.counters)
                fwd0, calls0 = engine.stats.tokens_forwarded, engine.stats.forward_calls
                ran = await state.run_inner_loop(trace)
                summary = state.children_summary()
                visits = state.root.visits
                chosen = state.root.children.index(state.most_visited())
                node = await state.commit()
                commits += 1
                trace.append(CommitEvent(
                    commit=commits, searches=ran, root_visits=visits, children=summary, chosen=chosen,
                    committed_tokens=list(node.tokens), committed_text=summary[chosen]["text"],
                    response_tokens=len(state.committed) - state.prompt_len,
                    counters={k: state.counters[k] - before[k] for k in state.counters},
                    tokens_forwarded=engine.stats.tokens_forwarded - fwd0,
                    forward_calls=engine.stats.forward_calls - calls0))
            resp = state.committed[state.prompt_len:]
        finally:
            state.close()
        trace.append(EngineStatsEvent(stats=engine.stats.as_dict()))  # this search's share
        judge_stats = getattr(self.evaluator, "stats", None)
        trace.append(DoneEvent(stop_reason=state.done, commits=commits, searches=state.total_searches,
                               counters=dict(state.counters),
                               evaluator=judge_stats() if callable(judge_stats) else {},
                               embedder=type(embedder).__name__ if embedder is not None else None))
        text = engine.tokenizer.decode(resp, skip_special_tokens=True)
        sample = Sample(text=text, answer=extract_answer(text), tokens_generated=len(resp), token_ids=list(resp),
                        stop_reason=state.done)
        return self.result(prompt, sample, [sample], trace)

