"""Baselines: greedy, independent sampling, best-of-N by a scorer, self-consistency (majority vote).

All n samples fork from ONE prefill of the prompt and decode together in one batched call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from decodesearch.engine import GREEDY, Branch, Sampler
from decodesearch.engine.scheduler import SearchEngine
from decodesearch.scoring.answers import normalize_answer
from decodesearch.scoring.metrics import vote_index
from decodesearch.scoring.step_scorers import AGGREGATES, DEFAULT_DELIMITER, make_step_scorer, split_steps
from decodesearch.scoring.step_scorers import aggregate as aggregate_scores
from decodesearch.strategies.base import (
    Sample, SearchResult, Strategy, StrategySettings, check_choice, check_positive_int, make_sample,
)
from decodesearch.strategies.trace import AnswerEvent, ChooseEvent, Event, ForkEvent, ScoreEvent


def mean_logprob(sample: Sample, branch: Branch) -> float:
    """The default best-of-N score: mean log-prob (nats/token) the model gave its sampled tokens."""
    lps = [lp for lp in branch.token_logprobs[branch.prompt_len :] if lp is not None]
    return sum(lps) / len(lps) if lps else float("-inf")


def best_of(samples: list[Sample], branches: list[Branch], scorer: Callable[[str], float] | None,
            trace: list[Event]) -> int:
    """Index of the highest-scoring sample (ties: the earliest); sets `Sample.score`, traces each
    score. `scorer=None` scores by `mean_logprob`."""
    for i, (s, b) in enumerate(zip(samples, branches)):
        s.score = float(scorer(s.text)) if scorer else mean_logprob(s, b)
        trace.append(ScoreEvent(sample=i, score=s.score))
    return max(range(len(samples)), key=lambda i: (samples[i].score, -i))


def best_scored(samples: list[Sample]) -> int:
    """Index of the sample with the highest `score` (ties: the earliest)."""
    return max(range(len(samples)), key=lambda i: (samples[i].score, -i))


def weighted_vote(samples: list[Sample]) -> int:
    """Weighted best-of-N: the answer with the largest sum of `score`s wins; returns its best-scored
    sample (ties: the earliest); `best_scored` when no sample has an answer."""
    i = vote_index([s.answer for s in samples], key=normalize_answer, weights=[s.score for s in samples])
    if i is None:
        return best_scored(samples)
    win = normalize_answer(samples[i].answer)
    return max((j for j, s in enumerate(samples) if s.answer is not None and normalize_answer(s.answer) == win),
               key=lambda j: (samples[j].score, -j))


def vote(samples: list[Sample]) -> int:
    """Index of the sample whose (normalised) answer wins the majority vote; ties go to the
    earliest; 0 when no sample has an answer."""
    i = vote_index([s.answer for s in samples], key=normalize_answer)
    return 0 if i is None else i


@dataclass(frozen=True)
class SamplingSettings(StrategySettings):
    """`n` samples per prompt."""

    n: int = 4

    def __post_init__(self):
        check_positive_int("n", self.n)
        super().__post_init__()


class Sampling(Strategy):
    """`n` independent samples; the result is the first one."""

    name = "sampling"
    settings_class = SamplingSettings

    def peak_rows(self, max_rows: int) -> int:
        return self.n + 1

    async def draw_samples(self, engine: SearchEngine, root: Branch) -> tuple[list[Branch], list[Sample], list[Event]]:
        branches = await engine.fork(root, self.n)
        outs = await engine.decode(branches, self.max_tokens, self.sampler, self.stop)
        samples = [make_sample(b, len(o)) for b, o in zip(branches, outs)]
        trace: list[Event] = [ForkEvent(n=self.n)]
        trace += [AnswerEvent(sample=i, answer=s.answer, stop=s.stop_reason) for i, s in enumerate(samples)]
        return branches, samples, trace

    async def choose(self, engine: SearchEngine, prompt: str, branches: list[Branch], samples: list[Sample],
                     trace: list[Event]) -> int:
        return 0

    async def search(self, engine: SearchEngine, root: Branch, prompt: str) -> SearchResult:
        branches, samples, trace = await self.draw_samples(engine, root)
        chosen = await self.choose(engine, prompt, branches, samples, trace)
        trace.append(ChooseEvent(sample=chosen))
        return self.result(prompt, samples[chosen], samples, trace)


@dataclass(frozen=True)
class GreedySettings(SamplingSettings):
    """One greedy continuation: `n` is 1, the sampler greedy."""

    n: int = 1
    sampler: Sampler | None = GREEDY

    def __post_init__(self):
        if self.n != 1:
            raise ValueError(f"n={self.n!r} is out of range; accepted: 1 (greedy decodes one continuation)")
        super().__post_init__()


class Greedy(Sampling):
    """One greedy continuation."""

    name = "greedy"
    settings_class = GreedySettings


class SelfConsistency(Sampling):
    """`n` samples; the answer is the majority vote over their extracted answers (Wang et al. 2022)."""

    name = "self_consistency"

    async def choose(self, engine, prompt, branches, samples, trace) -> int:
        return vote(samples)


@dataclass(frozen=True)
class BestOfNSettings(SamplingSettings):
    """See `BestOfN`."""

    scorer: Callable[[str], float] | None = None
    step_scorer: str | None = None
    aggregate: str = "last"
    weighted: bool = False
    delimiter: str = DEFAULT_DELIMITER

    def __post_init__(self):
        super().__post_init__()
        if self.scorer is not None and not callable(self.scorer):
            raise ValueError(f"scorer={self.scorer!r} must be a callable text -> float, or None")
        if self.scorer is not None and self.step_scorer is not None:
            raise ValueError("give scorer or step_scorer, not both")
        check_choice("aggregate", self.aggregate, AGGREGATES)
        object.__setattr__(self, "weighted", bool(self.weighted))


class BestOfN(Sampling):
    """`n` samples; the one with the highest score wins (ties: the earliest).

    `scorer` is any `text -> float` callable (a verifier, a reward model, a `SelfJudge`); None
    scores by `mean_logprob`, the model's own confidence. Or a `step_scorer` (a spec or object, see
    `decodesearch.scoring.step_scorers`; `best_of_n.step_scorer` is the scorer built from it) scores
    each step (split at `delimiter`), aggregated by `aggregate`; with `weighted=True` the answer with
    the largest sum of scores wins (weighted best-of-N, as in search-and-learn) and its best-scored
    sample is returned.
    """

    name = "best_of_n"
    settings_class = BestOfNSettings

    def settings_changed(self, old) -> None:
        s = self.settings
        if old is None or (old.step_scorer, old.delimiter) != (s.step_scorer, s.delimiter):
            self._step_scorer = None if s.step_scorer is None else make_step_scorer(s.step_scorer, s.delimiter)

    @property
    def step_scorer(self):
        """The step scorer built from `settings.step_scorer`, or None."""
        return self._step_scorer

    def peak_rows(self, max_rows: int) -> int:
        return self.n + 1 + int(getattr(self.step_scorer, "rows_needed", 0))

    def shared_judge(self):
        return self.step_scorer

    async def choose(self, engine, prompt, branches, samples, trace) -> int:
        if self.step_scorer is None:
            return best_of(samples, branches, self.scorer, trace)
        steps = [split_steps(s.text, self.delimiter) for s in samples]
        extra = {}
        if getattr(self.step_scorer, "needs_logprobs", False):  # one step = the whole sample here
            steps = [[s.text] for s in samples]
            extra["logprobs"] = [[[lp for lp in b.token_logprobs[b.prompt_len:] if lp is not None]] for b in branches]
        scores = await self.step_scorer.score_steps(engine, prompt, steps, **extra)
        for i, (s, sc) in enumerate(zip(samples, scores)):
            s.score = aggregate_scores(sc, self.aggregate)
            trace.append(ScoreEvent(sample=i, score=s.score, steps=len(sc)))
        return weighted_vote(samples) if self.weighted else best_scored(samples)


__all__ = ["BestOfN", "BestOfNSettings", "Greedy", "GreedySettings", "Sampling", "SamplingSettings", "SelfConsistency",
           "best_of", "best_scored", "mean_logprob", "vote", "weighted_vote"]
