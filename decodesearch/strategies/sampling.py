"""Baselines: greedy, independent sampling, best-of-N by a scorer, self-consistency (majority vote).

All n samples fork from ONE prefill of the prompt and decode together in one batched call.
"""

from __future__ import annotations

from typing import Callable

from decodesearch.engine import GREEDY, Branch
from decodesearch.engine.scheduler import SearchEngine
from decodesearch.scoring.answers import normalize_answer
from decodesearch.scoring.metrics import vote_index
from decodesearch.strategies.base import Sample, SearchResult, Strategy, check_positive_int, make_sample


def mean_logprob(sample: Sample, branch: Branch) -> float:
    """The default best-of-N score: mean log-prob (nats/token) the model gave its sampled tokens."""
    lps = [lp for lp in branch.token_logprobs[branch.start :] if lp is not None]
    return sum(lps) / len(lps) if lps else float("-inf")


def best_of(samples: list[Sample], branches: list[Branch], scorer: Callable[[str], float] | None, trace: list) -> int:
    """Index of the highest-scoring sample (ties: the earliest); sets `Sample.score`, traces each
    score. `scorer=None` scores by `mean_logprob`."""
    for i, (s, b) in enumerate(zip(samples, branches)):
        s.score = float(scorer(s.text)) if scorer else mean_logprob(s, b)
        trace.append({"event": "score", "sample": i, "score": s.score})
    return max(range(len(samples)), key=lambda i: (samples[i].score, -i))


def vote(samples: list[Sample]) -> int:
    """Index of the sample whose (normalised) answer wins the majority vote; ties go to the
    earliest; 0 when no sample has an answer."""
    i = vote_index([s.answer for s in samples], key=normalize_answer)
    return 0 if i is None else i


class Sampling(Strategy):
    """`n` independent samples; the result is the first one."""

    name = "sampling"

    def __init__(self, n: int = 4, **kwargs):
        check_positive_int("n", n)
        super().__init__(**kwargs)
        self.n = n

    def peak_rows(self, max_rows: int) -> int:
        return self.n + 1

    async def draw(self, engine: SearchEngine, root: Branch) -> tuple[list[Branch], list[Sample], list[dict]]:
        branches = await engine.fork(root, self.n)
        outs = await engine.decode(branches, self.max_tokens, self.sampler, self.stop)
        samples = [make_sample(b, len(o)) for b, o in zip(branches, outs)]
        trace = [{"event": "fork", "n": self.n}] + [
            {"event": "answer", "sample": i, "answer": s.answer, "stop": s.stop_reason} for i, s in enumerate(samples)
        ]
        return branches, samples, trace

    def choose(self, branches: list[Branch], samples: list[Sample], trace: list[dict]) -> int:
        return 0

    async def search(self, engine: SearchEngine, root: Branch, prompt: str) -> SearchResult:
        branches, samples, trace = await self.draw(engine, root)
        chosen = self.choose(branches, samples, trace)
        trace.append({"event": "choose", "sample": chosen})
        return self.result(prompt, samples[chosen], samples, trace)


class Greedy(Sampling):
    """One greedy continuation."""

    name = "greedy"

    def __init__(self, **kwargs):
        kwargs.setdefault("sampler", GREEDY)
        super().__init__(n=1, **kwargs)


class SelfConsistency(Sampling):
    """`n` samples; the answer is the majority vote over their extracted answers (Wang et al. 2022)."""

    name = "self_consistency"

    def choose(self, branches, samples, trace) -> int:
        return vote(samples)


class BestOfN(Sampling):
    """`n` samples; the one with the highest score wins (ties: the earliest).

    `scorer` is any `text -> float` callable (a verifier, a reward model, a `SelfJudge`); None
    scores by `mean_logprob`, the model's own confidence.
    """

    name = "best_of_n"

    def __init__(self, n: int = 4, scorer: Callable | None = None, **kwargs):
        super().__init__(n=n, **kwargs)
        if scorer is not None and not callable(scorer):
            raise ValueError(f"scorer={scorer!r} must be a callable text -> float, or None")
        self.scorer = scorer

    def choose(self, branches, samples, trace) -> int:
        return best_of(samples, branches, self.scorer, trace)


__all__ = ["BestOfN", "Greedy", "Sampling", "SelfConsistency", "best_of", "mean_logprob", "vote"]
