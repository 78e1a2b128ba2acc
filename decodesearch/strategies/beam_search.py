"""Step-level beam search guided by a step scorer (as in HF's search-and-learn), on the engine.

`n` beams fork from ONE prefill of the prompt. Each round every active beam decodes its next step
(until the step `delimiter`, EOS, a stop string or its token budget `max_tokens`); the scorer
scores the steps of every beam (`decodesearch.scoring.step_scorers`), the scores are aggregated
("last", "min", "prod"), beams that finished leave the pool, and the best `n // beam_width` of the
rest are kept and each forked `beam_width` times at the step boundary (a row copy: a kept beam is
never re-encoded); the others are released. The search ends when no beam is active or after
`max_steps` rounds. The answer: the finished beam with the best aggregated score (`final="best"`),
or the answer with the largest sum of scores over finished beams (`final="weighted"`).

Defaults follow search-and-learn: n=8 (their N ranges 4..256), beam_width=4, temperature 0.8,
top-p 1.0, delimiter "\\n\\n", aggregate "last", at most 40 steps. The scorer defaults to the
offline `self_judge`; pass "logprob", "prm:<path>" or a scorer object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from decodesearch.engine import Branch, Sampler, Stop, StopReason
from decodesearch.engine.scheduler import SearchEngine
from decodesearch.scoring.answers import extract_answer
from decodesearch.scoring.step_scorers import AGGREGATES, DEFAULT_DELIMITER, aggregate, make_step_scorer
from decodesearch.strategies.base import (
    Sample, SearchResult, Strategy, StrategySettings, check_choice, check_positive_int, model_text,
)
from decodesearch.strategies.independent_samples import best_scored, weighted_vote
from decodesearch.strategies.trace import ChooseEvent, Event, ForkEvent, StepEvent

FINALS = ("best", "weighted")


@dataclass
class Beam:
    """One beam: its branch, its steps (texts) and their token log-probs, its subtree (DVTS)."""

    branch: Branch
    steps: list[str] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    group: int = 0
    tokens: int = 0
    score: float = 0.0
    done: bool = False

    def child(self, branch: Branch) -> "Beam":
        return Beam(branch, list(self.steps), [list(x) for x in self.logprobs], self.group, self.tokens, self.score)


@dataclass(frozen=True)
class BeamSearchSettings(StrategySettings):
    """See the module docstring. `scorer`: a step scorer spec (text) or object."""

    max_tokens: int = 1024
    sampler: Sampler | None = Sampler(temperature=0.8)
    n: int = 8
    beam_width: int = 4
    delimiter: str = DEFAULT_DELIMITER
    scorer: Any = "self_judge"
    aggregate: str = "last"
    max_steps: int = 40
    final: str = "best"

    def __post_init__(self):
        check_positive_int("n", self.n)
        check_positive_int("beam_width", self.beam_width)
        check_positive_int("max_steps", self.max_steps)
        if self.n % self.beam_width:
            raise ValueError(f"n={self.n} is out of range; accepted: a multiple of beam_width ({self.beam_width})")
        if not isinstance(self.delimiter, str) or not self.delimiter:
            raise ValueError("delimiter must be a non-empty string")
        check_choice("aggregate", self.aggregate, AGGREGATES)
        check_choice("final", self.final, FINALS)
        super().__post_init__()


class BeamSearch(Strategy):
    """Step-level beam search (see the module docstring); options: `BeamSearchSettings`. The
    `scorer` attribute is the step scorer built from `settings.scorer`."""

    name = "beam_search"
    settings_class = BeamSearchSettings

    def settings_changed(self, old) -> None:
        s = self.settings
        if old is None or (old.scorer, old.delimiter) != (s.scorer, s.delimiter):
            self._scorer = make_step_scorer(s.scorer, s.delimiter)

    @property
    def scorer(self):
        """The step scorer built from `settings.scorer`."""
        return self._scorer

    def peak_rows(self, max_rows: int) -> int:
        return self.n + 1 + int(getattr(self.scorer, "rows_needed", 0))

    def shared_judge(self):
        return self.scorer

    @staticmethod
    def _sample(engine: SearchEngine, beam: Beam) -> Sample:
        """A finished beam as a `Sample`; its row is released."""
        b = beam.branch
        sample = Sample(text=b.text, answer=extract_answer(model_text(b)), tokens_generated=beam.tokens,
                        token_ids=list(b.new_tokens), stop_reason=b.stop_reason, score=beam.score)
        engine.release(b)
        return sample

    def keep(self, active: list[Beam]) -> list[Beam]:
        """The beams that go on (best aggregated score first; ties: the earlier beam)."""
        ranked = sorted(range(len(active)), key=lambda i: (-active[i].score, i))
        return [active[i] for i in ranked[: self.n // self.beam_width]]

    async def first_beams(self, engine: SearchEngine, root: Branch) -> list[Beam]:
        return [Beam(b) for b in await engine.fork(root, self.n)]

    async def search(self, engine: SearchEngine, root: Branch, prompt: str) -> SearchResult:
        step_stop = Stop(eos_ids=self.stop.eos_ids, strings=self.stop.strings + (self.delimiter,))
        active = await self.first_beams(engine, root)
        finished: list[Sample] = []
        trace: list[Event] = [ForkEvent(n=self.n, beam_width=self.beam_width)]
        generated = 0  # tokens sampled in the whole tree (a kept beam's shared prefix counts once)
        for step in range(self.max_steps):
            bs = [b.branch for b in active]
            outs = await engine.decode(bs, [self.max_tokens - b.tokens for b in active], self.sampler, step_stop)
            generated += sum(map(len, outs))
            for beam, out in zip(active, outs):
                if out:
                    beam.steps.append(engine.tokenizer.decode(out, skip_special_tokens=True))
                    beam.logprobs.append([lp for lp in beam.branch.token_logprobs[-len(out):]])
                beam.tokens += len(out)
                r = beam.branch.stop_reason
                user_stop = r == StopReason.STOP_STRING and self.stop.hit(engine.tokenizer, out)
                beam.done = (r in (StopReason.EOS, StopReason.CONTEXT) or user_stop or beam.tokens >= self.max_tokens
                             or not out)
            extra = {"logprobs": [b.logprobs for b in active]} if getattr(self.scorer, "needs_logprobs", False) else {}
            scores = await self.scorer.score_steps(engine, prompt, [b.steps for b in active], **extra)
            for beam, s in zip(active, scores):
                beam.score = aggregate(s, self.aggregate)
            finished += [self._sample(engine, b) for b in active if b.done]  # rows freed at once
            going = [b for b in active if not b.done]
            kept = self.keep(going)
            for b in going:
                if b not in kept:
                    engine.release(b.branch)
            trace.append(StepEvent(step=step, scores=[round(b.score, 6) for b in active],
                                   finished=sum(b.done for b in active), kept=len(kept)))
            if not kept or step == self.max_steps - 1:
                finished += [self._sample(engine, b) for b in kept]
                break
            active = []
            for b in kept:
                kids = await engine.fork(b.branch, self.beam_width - 1)
                active += [b] + [b.child(k) for k in kids]
        samples = finished
        chosen = weighted_vote(samples) if self.final == "weighted" else best_scored(samples)
        trace.append(ChooseEvent(sample=chosen, final=self.final))
        result = self.result(prompt, samples[chosen], samples, trace)
        result.tokens_generated = generated
        return result
