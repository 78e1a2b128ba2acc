"""s1 budget forcing (Muennighoff et al. 2025, arXiv 2501.19393) on the engine.

The model "thinks" until it ends (EOS or the `end_of_thinking` string) or spends
`max_thinking_tokens`. An end that comes while fewer than `min_thinking_tokens` were spent, or
while forced continuations remain (`num_ignore`), is suppressed: the end is rewound (an EOS is
never appended) and the `ignore` string ("Wait") is teacher-forced, and thinking goes on. Then the
`answer_cue` is forced and the answer decoded (at most `max_answer_tokens`). `max_tokens` (default
thinking + answer) bounds both together: thinking stops `max_answer_tokens` before it, the answer
at it. The answer is read from the cue plus the model's answer tokens (the cue opens the
`\\boxed{`); answers before each "Wait" only from the model's own explicit statements. Near the
model's context limit thinking stops early so the cue still fits (no "Wait" is forced without
room for it); the sample then has stop reason "context" (a prompt leaving no room for the cue
gets no answer), and nothing raises.
"""

from __future__ import annotations

from dataclasses import dataclass

from decodesearch.engine import GREEDY, Branch, Sampler, Stop, StopReason
from decodesearch.engine.scheduler import SearchEngine
from decodesearch.scoring.answers import extract_answer
from decodesearch.strategies.base import (
    SearchResult, Strategy, StrategySettings, check_positive_int, make_sample, model_text,
)
from decodesearch.strategies.trace import (
    AnswerCueEvent, AnswerEvent, ContextEvent, Event, RewindEvent, ThinkEvent, TriggerEvent,
)


@dataclass(frozen=True)
class BudgetForcingSettings(StrategySettings):
    """See the module docstring; `max_tokens=None` becomes `max_thinking_tokens + max_answer_tokens`."""

    max_tokens: int | None = None
    sampler: Sampler | None = GREEDY
    min_thinking_tokens: int = 0
    max_thinking_tokens: int = 512
    ignore: str = "\n\nWait"
    num_ignore: int = 1
    end_of_thinking: str = "Final Answer"
    answer_cue: str = "\n\nFinal Answer: \\boxed{"
    max_answer_tokens: int = 32

    def __post_init__(self):
        check_positive_int("max_thinking_tokens", self.max_thinking_tokens)
        check_positive_int("max_answer_tokens", self.max_answer_tokens)
        check_positive_int("min_thinking_tokens", self.min_thinking_tokens, minimum=0)
        check_positive_int("num_ignore", self.num_ignore, minimum=0)
        if self.min_thinking_tokens > self.max_thinking_tokens:
            raise ValueError(
                f"min_thinking_tokens={self.min_thinking_tokens} is out of range; accepted: 0..max_thinking_tokens "
                f"({self.max_thinking_tokens})"
            )
        for name in ("ignore", "end_of_thinking", "answer_cue"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        if self.max_tokens is None:
            object.__setattr__(self, "max_tokens", self.max_thinking_tokens + self.max_answer_tokens)
        super().__post_init__()


class BudgetForcing(Strategy):
    """s1 budget forcing (see the module docstring); options: `BudgetForcingSettings`."""

    name = "budget_forcing"
    settings_class = BudgetForcingSettings

    def forced_texts(self) -> tuple[str, ...]:
        return (self.ignore, self.answer_cue)

    def forced_insertions(self) -> int:
        return self.num_ignore + 1

    async def search(self, engine: SearchEngine, root: Branch, prompt: str) -> SearchResult:
        tok = engine.tokenizer
        b = (await engine.fork(root, 1))[0]
        think_stop = Stop(eos_ids=self.stop.eos_ids, strings=self.stop.strings + (self.end_of_thinking,))
        cue = tok.encode(self.answer_cue, add_special_tokens=False)
        ignore = self.ignore_ids(tok)

        def room() -> int:  # thinking tokens that still leave the cue and one answer token in the context
            return engine.max_context - b.length - len(cue) - 1

        # `max_tokens` bounds thinking + answer together (a caller's budget, e.g. lm-eval's max_gen_toks).
        think_cap = min(self.max_thinking_tokens, max(0, self.max_tokens - self.max_answer_tokens))
        thought, ignored, before = 0, 0, []
        trace: list[Event] = []
        hit_context = False
        while True:
            want = think_cap - thought
            limit = max(0, min(want, room() - 1))  # decode stops one short of the context itself
            out = (await engine.decode([b], limit, self.sampler, think_stop))[0] if limit > 0 else []
            thought += len(out)
            if limit < want and b.stop_reason not in (StopReason.EOS, StopReason.STOP_STRING):
                b.stop_reason, hit_context = StopReason.CONTEXT, True
            trace.append(ThinkEvent(tokens=len(out), stop=b.stop_reason))
            ended = b.stop_reason in (StopReason.EOS, StopReason.STOP_STRING)
            wants_more = ignored < self.num_ignore or thought < self.min_thinking_tokens
            if not (ended and wants_more and thought < think_cap):
                break
            if b.stop_reason == StopReason.STOP_STRING:
                cut = self._tokens_holding(tok, out, self.end_of_thinking)
                engine.rewind(b, cut)
                trace.append(RewindEvent(tokens=cut))
            if len(ignore) + 1 > room():  # no room to force the continuation and still answer
                b.stop_reason, hit_context = StopReason.CONTEXT, True
                trace.append(ContextEvent(position=thought))
                break
            answer = extract_answer(model_text(b), explicit=True)
            before.append(answer)
            await engine.extend([b], [ignore])
            ignored += 1
            trace.append(TriggerEvent(trigger=self.ignore, position=thought, answer_before=answer))
        out: list[int] = []
        cued = room() >= 0
        if cued:
            await engine.extend([b], [cue])
            trace.append(AnswerCueEvent(position=thought))
            out = (await engine.decode([b], min(self.max_answer_tokens, self.max_tokens - thought), GREEDY, self.stop))[0]
            forced = len(ignore) * ignored + len(cue)
        else:  # the prompt leaves no room for the cue: stop at the context limit, without an answer
            hit_context = True
            forced = len(ignore) * ignored
        if hit_context and b.stop_reason not in (StopReason.EOS, StopReason.STOP_STRING):
            b.stop_reason = StopReason.CONTEXT
        sample = make_sample(b, thought + len(out), answers_before_triggers=before, tokens_forced=forced)
        if cued:  # the cue opens the box; what fills it is the model's own answer
            sample.answer = extract_answer(self.answer_cue + tok.decode(out, skip_special_tokens=True)) or sample.answer
        trace.append(AnswerEvent(answer=sample.answer, tokens=sample.tokens_generated, stop=sample.stop_reason))
        return self.result(prompt, sample, [sample], trace)

    def ignore_ids(self, tok) -> list[int]:
        return tok.encode(self.ignore, add_special_tokens=False)

    @staticmethod
    def _tokens_holding(tok, out: list[int], text: str) -> int:
        """How many trailing tokens of `out` to drop so their decoded text no longer holds `text`."""
        for k in range(1, len(out) + 1):
            if text not in tok.decode(out[: len(out) - k], skip_special_tokens=False):
                return k
        return len(out)
