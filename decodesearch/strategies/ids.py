"""Iterative Deepening Sampling (IDS, arXiv 2502.05449) on the engine.

`n` samples fork from ONE prefill of the prompt. The paper's v1 text: the method "grows the
sampling budget in a geometric progression and adds self-reflection at each expansion step". So,
with `schedule="budget"` (the default), each sample's cumulative budget grows `b0, b0*gamma,
b0*gamma^2, ...` (rounded to whole tokens) up to `max_tokens`: triggers go in after 128, 256 and 512
sampled tokens for b0=128, gamma=2, max_tokens=1024. `schedule="segments"` is an earlier reading in
which the segments between triggers grow instead (triggers after 128, 384, 896 tokens), which
always leaves only b0 tokens after the last trigger.

At every boundary a sample reaches while still generating, a self-correction trigger sentence is
teacher-forced with `extend` and generation continues. With `align="line"` the sample first keeps
decoding to the end of its line (at most `align_max_tokens` more tokens, counted as sampled), so a
trigger never splits a word or a `\\boxed{}`. A sample that stops early (EOS or a stop string) is
accepted (`policy="accept"`), or with `policy="force"` gets a trigger in place of its end
(s1-style) and continues until the budget is spent. Trigger tokens are recorded apart
(`Sample.tokens_forced`); with `count_triggers=True` they also count against `max_tokens`, for
exact equal-token comparisons. Before each trigger the answer the model had stated explicitly (a
`\\boxed{}` or a "final answer is" phrase in its own tokens) is kept
(`Sample.answers_before_triggers`, None when it had stated none, and in the trace). Final answer
by majority vote, best-of-N by a scorer, or none (the first sample); answers come only from the
model's own tokens, never from a trigger.

Reasoning models (a thinking span `<think> ... </think>` before the answer). With `think="auto"`
(the default) and a tokenizer that has `<think>` and `</think>` as single tokens, a sample whose
prompt leaves thinking open (the prompt ends inside `<think>`, or has no tag, so the model may open
one itself) gets its triggers inside the thinking span only, never in the answer after `</think>`;
a prompt that already closed it (a chat template with thinking switched off) is a plain prompt, and
`think="off"` ignores the tags. While thinking, decoding also stops on `</think>`, so the tag is held
back for a decision before anything follows it:
- A boundary reached while the sample is still thinking gets its trigger there, as for any model:
  the sample has not written `</think>`, so the trigger lands before it.
- `policy="accept"`: a `</think>` before the next boundary means the sample finished thinking, as an
  early EOS does for a plain model. The tag is kept, the sample writes its answer (to EOS or
  `max_tokens`) and the boundaries it passes while answering get no trigger: a trigger after
  `</think>` would be reflection outside the thinking, in a place the model was not trained to
  reflect, and moving it before `</think>` would throw away the answer the sample wrote and reopen a
  thinking it closed, which is what `force` is for.
- `policy="force"`: a `</think>` that comes while a boundary is still ahead of the sample is dropped
  (rewound) and replaced by the trigger, as s1 replaces the end of thinking by "Wait", so every
  sample gets all of its scheduled reflections inside its thinking; after its last boundary a
  `</think>` is kept and the sample answers with what is left of `max_tokens` (at least half of it
  on the budget schedule). A `</think>` right after a trigger is kept (the model insists; this
  also bounds the loop). The dropped `</think>` counts as a sampled token: it was generated.
- An EOS inside the thinking span is treated as for a plain model (accepted, or replaced by a
  trigger with `force`); an EOS in the answer always ends the sample.
- Answers are read as for any model, from the model's own tokens, thinking included (a `\\boxed{}`
  in the answer comes last and wins). The trace's "fork" event says whether the span was used
  (`think`), a "think_end" event marks a kept `</think>`, and a replaced one is a trigger with
  reason "think_end".

Defaults, and why (the paper's exact values could not be read here):
- n=4: the largest sample count that keeps a CPU benchmark of small models practical while a
  majority vote still means something.
- b0=128, gamma=2: a first attempt at a MATH-style problem by a small instruct model is ~100-250
  tokens, so the first trigger lands around the first answer. When `b0` is not given and
  `max_tokens` is small, b0 = max(1, max_tokens // 4) (so short budgets still get triggers).
- max_tokens=1024, policy="accept" (forcing spends the whole budget on every sample),
  aggregate="majority" (self-consistency over the final answers), triggers cycled in order.
- triggers: the `recheck` preset, one sentence of ours with no answer-like words. Presets
  (`trigger_preset`): `recheck` (ours), `wait` (the bare "Wait" of s1 budget forcing, Muennighoff
  et al. 2025), `double_check` (ours).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from decodesearch.engine import Branch, Stop, StopReason
from decodesearch.engine.scheduler import SearchEngine
from decodesearch.scoring.answers import extract_answer
from decodesearch.strategies.budget_forcing import BudgetForcing
from decodesearch.strategies.base import (
    SearchResult, Strategy, StrategySettings, check_positive_int, make_sample, model_text,
)
from decodesearch.strategies.independent_samples import best_of, vote
from decodesearch.strategies.trace import AnswerEvent, ChooseEvent, Event, ForkEvent, ThinkEndEvent, TriggerEvent

TRIGGER_PRESETS: dict[str, tuple[str, ...]] = {
    "recheck": ("\n\nWait, let me check each step of the work above again.\n",),
    "wait": ("\n\nWait",),
    "double_check": ("\n\nHmm, let me double-check the previous steps for mistakes.\n",),
}
DEFAULT_TRIGGERS = TRIGGER_PRESETS["recheck"]
POLICIES = ("accept", "force")
AGGREGATES = ("majority", "best_of_n", "none")
TRIGGER_ORDERS = ("cycle", "random")
SCHEDULES = ("budget", "segments")
ALIGNS = ("none", "line")
THINKS = ("auto", "off")
#: The stop reason of an aligned decode that reached the end of its line (`align="line"`).
LINE = "line"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def think_tag_ids(tokenizer) -> tuple[int, int] | None:
    """The ids of `<think>` and `</think>` when the tokenizer has each as one token (it encodes to
    that single token and decodes back to the tag), else None."""
    ids = []
    for tag in (THINK_OPEN, THINK_CLOSE):
        try:
            enc = tokenizer.encode(tag, add_special_tokens=False)
        except Exception:  # a tokenizer that cannot encode the tag has no such token
            return None
        if len(enc) != 1 or tokenizer.decode(enc, skip_special_tokens=False) != tag:
            return None
        ids.append(int(enc[0]))
    return ids[0], ids[1]


def prompt_leaves_thinking_open(prompt_ids, tags: tuple[int, int]) -> bool:
    """Whether a sample after `prompt_ids` starts inside (or may open) a thinking span: the prompt's
    last think tag is `<think>`, or it has none. False when the prompt closed the span."""
    open_id, close_id = tags
    last = {t: i for i, t in enumerate(prompt_ids) if t in tags}
    return last.get(close_id, -1) <= last.get(open_id, -1) if close_id in last else True


def budget_boundaries(b0: int, gamma: float, max_tokens: int) -> list[int]:
    """Cumulative token counts at which triggers go in: round(b0 * gamma**k) for k = 0, 1, ...,
    each strictly below `max_tokens` and above the previous one."""
    out, k = [], 0
    while True:
        pos = max(1, round(b0 * gamma**k))
        if pos >= max_tokens:
            return out
        if not out or pos > out[-1]:
            out.append(pos)
        k += 1


def segment_boundaries(b0: int, gamma: float, max_tokens: int) -> list[int]:
    """Cumulative sampled-token counts at which triggers go in: b0, b0 + round(b0*gamma), ...,
    every one strictly below `max_tokens`. Segment i has length max(1, round(b0 * gamma**i))."""
    out, pos, i = [], 0, 0
    while True:
        pos += max(1, round(b0 * gamma**i))
        if pos >= max_tokens:
            return out
        out.append(pos)
        i += 1


@dataclass(frozen=True)
class IDSSettings(StrategySettings):
    """See the module docstring. `b0=None` becomes min(128, max(1, max_tokens // 4)); a
    `trigger_preset` sets `triggers`. Every bad option is reported, in one error, one clause each
    (so a bad `policy` is never reported as a `b0` problem)."""

    max_tokens: int = 1024
    n: int = 4
    b0: int | None = None
    gamma: float = 2.0
    triggers: Sequence[str] = DEFAULT_TRIGGERS
    trigger_preset: str | None = None
    trigger_order: str = "cycle"
    schedule: str = "budget"
    align: str = "none"
    align_max_tokens: int = 32
    count_triggers: bool = False
    policy: str = "accept"
    aggregate: str = "majority"
    scorer: Callable[[str], float] | None = None
    think: str = "auto"

    def __post_init__(self):
        problems: list[str] = []

        def check(fn, *args, **kw):
            try:
                fn(*args, **kw)
            except ValueError as exc:
                problems.append(str(exc))

        for name, allowed in (("trigger_order", TRIGGER_ORDERS), ("policy", POLICIES), ("aggregate", AGGREGATES),
                              ("schedule", SCHEDULES), ("align", ALIGNS), ("think", THINKS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                problems.append(f"{name}={value!r} is not accepted; choose one of {', '.join(allowed)}")
        check(check_positive_int, "n", self.n)
        check(check_positive_int, "max_tokens", self.max_tokens)
        check(check_positive_int, "align_max_tokens", self.align_max_tokens)
        max_tokens, b0, gamma, triggers = self.max_tokens, self.b0, self.gamma, self.triggers
        max_ok = isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1
        if b0 is None:
            b0 = min(128, max(1, max_tokens // 4)) if max_ok else 1
        else:
            check(check_positive_int, "b0", b0)
            if max_ok and isinstance(b0, int) and not isinstance(b0, bool) and b0 > max_tokens:
                problems.append(f"b0={b0} is out of range; accepted: 1..max_tokens ({max_tokens})")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 1:
            problems.append(f"gamma={gamma!r} is out of range; accepted: a number > 1")
        preset = self.trigger_preset
        if preset is not None:
            if preset not in TRIGGER_PRESETS:
                problems.append(f"trigger_preset={preset!r} is not accepted; choose one of {', '.join(TRIGGER_PRESETS)}")
            elif triggers is not DEFAULT_TRIGGERS and tuple(triggers) != TRIGGER_PRESETS[preset]:
                problems.append("give triggers or trigger_preset, not both")
            else:
                triggers = TRIGGER_PRESETS[preset]
        if isinstance(triggers, str) or not triggers or not all(isinstance(t, str) and t for t in triggers):
            problems.append("triggers must be a non-empty list of non-empty strings")
        if problems:
            raise ValueError("; ".join(problems))
        put = object.__setattr__
        put(self, "b0", b0)
        put(self, "gamma", float(gamma))
        put(self, "triggers", list(triggers))
        put(self, "count_triggers", bool(self.count_triggers))
        super().__post_init__()


class IDS(Strategy):
    """Iterative deepening sampling (see the module docstring); options: `IDSSettings`."""

    name = "ids"
    settings_class = IDSSettings

    @property
    def boundaries(self) -> list[int]:
        """The sampled-token counts where triggers go in (from `schedule`, `b0`, `gamma`, `max_tokens`)."""
        s = self.settings
        make = budget_boundaries if s.schedule == "budget" else segment_boundaries
        return make(s.b0, s.gamma, s.max_tokens)

    def revise(self, **changes) -> IDSSettings:
        """As `Strategy.revise`; a `max_tokens` lowered below `b0` lowers `b0` with it."""
        if "max_tokens" in changes and "b0" not in changes and isinstance(changes["max_tokens"], int):
            changes["b0"] = max(1, min(self.settings.b0, changes["max_tokens"]))
        return super().revise(**changes)

    def forced_texts(self) -> tuple[str, ...]:
        return tuple(self.triggers)

    def forced_insertions(self) -> int:
        return len(self.boundaries)

    def peak_cols(self, tokenizer, prompt_len: int) -> int:
        align = self.align_max_tokens if self.align == "line" else 0
        return super().peak_cols(tokenizer, prompt_len) + len(self.boundaries) * align

    def peak_rows(self, max_rows: int) -> int:
        return self.n + 1

    def _next_stop(self, spent: int) -> int:
        return next((p for p in self.boundaries if p > spent), self.max_tokens)

    async def search(self, engine: SearchEngine, root: Branch, prompt: str) -> SearchResult:
        tok = engine.tokenizer
        trigger_ids = [tok.encode(t, add_special_tokens=False) for t in self.triggers]
        tags = think_tag_ids(tok) if self.think == "auto" else None
        thinks = tags is not None and prompt_leaves_thinking_open(root.tokens, tags)
        # Each sample's phase: "plain" (no thinking span), "think" (inside it: triggers go here),
        # "answer" (after its kept </think>: no more triggers).
        phase = ["think" if thinks else "plain"] * self.n
        think_stop = Stop(eos_ids=self.stop.eos_ids, strings=self.stop.strings + (THINK_CLOSE,),
                          boundaries=self.stop.boundaries)
        branches = await engine.fork(root, self.n)
        rngs = [random.Random(b.seed) for b in branches]
        sampled, forced = [0] * self.n, [0] * self.n
        before: list[list[str | None]] = [[] for _ in range(self.n)]
        trace: list[Event] = [ForkEvent(n=self.n, boundaries=list(self.boundaries), schedule=self.schedule,
                                        think=thinks)]

        def spent(i: int) -> int:  # what counts against max_tokens
            return sampled[i] + (forced[i] if self.count_triggers else 0)

        active = list(range(self.n))
        while active:
            limits = [(self.max_tokens if phase[i] == "answer" else self._next_stop(spent(i))) - spent(i)
                      for i in active]
            stops = [think_stop if phase[i] == "think" else self.stop for i in active]
            outs = await engine.decode([branches[i] for i in active], limits, self.sampler, stops)
            last = {i: list(out) for i, out in zip(active, outs)}  # each sample's latest decoded tokens
            for i, out in zip(active, outs):
                sampled[i] += len(out)
                if phase[i] == "think":
                    self._mark_think_end(tok, branches[i], out)
            if self.align == "line":
                aligned = [i for i in active
                           if phase[i] != "answer" and branches[i].stop_reason == StopReason.LENGTH
                           and spent(i) < self.max_tokens]
                for i, out in zip(aligned, await self._align(aligned, engine, sampled, branches, phase)):
                    last[i] = out
            to_trigger, answering = [], []
            for i, out in zip(active, outs):
                b = branches[i]
                if b.stop_reason == "think_end":  # a </think> held back: keep it, or replace it (force)
                    k = BudgetForcing._tokens_holding(tok, last[i], THINK_CLOSE)
                    j = b.length - k - 1  # the token before the tag: the model's own, or a trigger's
                    own = j >= b.prompt_len and b.token_logprobs[j] is not None
                    ahead = any(p > spent(i) for p in self.boundaries)
                    if self.policy == "force" and own and ahead and b.length - k + 1 < engine.max_context:
                        engine.rewind(b, k)
                        to_trigger.append((i, "think_end"))
                        continue
                    b.stop_reason = StopReason.LENGTH if spent(i) >= self.max_tokens else StopReason.STOP_STRING
                    phase[i] = "answer"
                    trace.append(ThinkEndEvent(sample=i, position=sampled[i]))
                    if spent(i) < self.max_tokens:
                        answering.append(i)
                    continue
                if spent(i) >= self.max_tokens or b.stop_reason == StopReason.CONTEXT or phase[i] == "answer":
                    continue
                if b.stop_reason in (StopReason.LENGTH, LINE):
                    to_trigger.append((i, "boundary"))
                elif self.policy == "force" and out:  # an early end replaced by a trigger
                    to_trigger.append((i, "early_stop"))
            if to_trigger:
                bs, ids = [], []
                for i, reason in to_trigger:
                    k = len(before[i])
                    t = k % len(self.triggers) if self.trigger_order == "cycle" else rngs[i].randrange(len(self.triggers))
                    if branches[i].length + len(trigger_ids[t]) >= engine.max_context:
                        branches[i].stop_reason = StopReason.CONTEXT  # no room for the trigger and one more token
                        continue
                    answer = extract_answer(model_text(branches[i]), explicit=True)
                    before[i].append(answer)
                    trace.append(TriggerEvent(sample=i, position=sampled[i], reason=reason, trigger=self.triggers[t],
                                              answer_before=answer))
                    bs.append(branches[i])
                    ids.append(trigger_ids[t])
                    forced[i] += len(trigger_ids[t])
                if bs:
                    await engine.extend(bs, ids)
            active = sorted(answering + [i for i, _ in to_trigger if branches[i].stop_reason != StopReason.CONTEXT
                                         and spent(i) < self.max_tokens])
        samples = [make_sample(b, g, answers_before_triggers=a, tokens_forced=f)
                   for b, g, a, f in zip(branches, sampled, before, forced)]
        for i, s in enumerate(samples):
            trace.append(AnswerEvent(sample=i, answer=s.answer, stop=s.stop_reason, tokens=s.tokens_generated,
                                     tokens_forced=s.tokens_forced))
        chosen = self._choose(branches, samples, trace)
        trace.append(ChooseEvent(sample=chosen, aggregate=self.aggregate))
        return self.result(prompt, samples[chosen], samples, trace)

    def _mark_think_end(self, tok, branch: Branch, out: list[int]) -> None:
        """A thinking sample's decode that ended on `</think>` (stopped by it, or by the budget on the
        very token; not by a caller's stop string) gets stop reason "think_end"."""
        if out and branch.stop_reason in (StopReason.LENGTH, StopReason.STOP_STRING) and not self.stop.hit(tok, out) \
                and THINK_CLOSE in tok.decode(out[-(len(THINK_CLOSE) + 2):], skip_special_tokens=False):
            branch.stop_reason = "think_end"

    async def _align(self, idx: list[int], engine: SearchEngine, sampled: list[int], branches: list[Branch],
                     phase: list[str]) -> list[list[int]]:
        """Decode each sample of `idx` (stopped at a boundary) to the end of its line, at most
        `align_max_tokens` more (and never past `max_tokens`); a row that ended its line has
        stop reason "line" (one inside a thinking span that wrote `</think>` instead: "think_end").
        Returns the tokens each decoded."""
        if not idx:
            return []
        bs = [branches[i] for i in idx]
        room = [min(self.align_max_tokens, self.max_tokens - sampled[i]) for i in idx]
        line = Stop(eos_ids=self.stop.eos_ids, strings=("\n",))
        think_line = Stop(eos_ids=self.stop.eos_ids, strings=("\n", THINK_CLOSE))
        stops = [think_line if phase[i] == "think" else line for i in idx]
        outs = await engine.decode(bs, room, self.sampler, stops)
        for i, b, out in zip(idx, bs, outs):
            sampled[i] += len(out)
            if b.stop_reason == StopReason.STOP_STRING:
                if phase[i] == "think":
                    self._mark_think_end(engine.tokenizer, b, out)
                if b.stop_reason == StopReason.STOP_STRING:
                    b.stop_reason = StopReason.STOP_STRING if self.stop.hit(engine.tokenizer, out) else LINE
        return [list(o) for o in outs]

    def _choose(self, branches, samples, trace) -> int:
        if self.aggregate == "majority":
            return vote(samples)
        if self.aggregate == "best_of_n":
            return best_of(samples, branches, self.scorer, trace)
        return 0
