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
from typing import Callable, Sequence

from decodesearch.engine import Branch, Stop
from decodesearch.engine.scheduler import SearchEngine
from decodesearch.scoring.answers import extract_answer
from decodesearch.strategies.base import SearchResult, Strategy, check_positive_int, make_sample, model_text
from decodesearch.strategies.sampling import best_of, vote

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


class IDS(Strategy):
    name = "ids"

    def __init__(
        self,
        n: int = 4,
        b0: int | None = None,
        gamma: float = 2.0,
        max_tokens: int = 1024,
        triggers: Sequence[str] = DEFAULT_TRIGGERS,
        trigger_preset: str | None = None,
        trigger_order: str = "cycle",
        schedule: str = "budget",
        align: str = "none",
        align_max_tokens: int = 32,
        count_triggers: bool = False,
        policy: str = "accept",
        aggregate: str = "majority",
        scorer: Callable[[str], float] | None = None,
        **kwargs,
    ):
        # Each option is checked on its own and every bad one is reported (one error, one line each),
        # so a bad `policy` is never reported as a `b0` problem.
        problems: list[str] = []

        def check(fn, *args, **kw):
            try:
                fn(*args, **kw)
            except ValueError as exc:
                problems.append(str(exc))

        for name, value, allowed in (
            ("trigger_order", trigger_order, TRIGGER_ORDERS),
            ("policy", policy, POLICIES),
            ("aggregate", aggregate, AGGREGATES),
            ("schedule", schedule, SCHEDULES),
            ("align", align, ALIGNS),
        ):
            if not isinstance(value, str) or value not in allowed:
                problems.append(f"{name}={value!r} is not accepted; choose one of {', '.join(allowed)}")
        check(check_positive_int, "n", n)
        check(check_positive_int, "max_tokens", max_tokens)
        check(check_positive_int, "align_max_tokens", align_max_tokens)
        max_ok = isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1
        if b0 is None:
            b0 = min(128, max(1, max_tokens // 4)) if max_ok else 1
        else:
            check(check_positive_int, "b0", b0)
            if max_ok and isinstance(b0, int) and not isinstance(b0, bool) and b0 > max_tokens:
                problems.append(f"b0={b0} is out of range; accepted: 1..max_tokens ({max_tokens})")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 1:
            problems.append(f"gamma={gamma!r} is out of range; accepted: a number > 1")
        if trigger_preset is not None:
            if trigger_preset not in TRIGGER_PRESETS:
                problems.append(f"trigger_preset={trigger_preset!r} is not accepted; choose one of "
                                f"{', '.join(TRIGGER_PRESETS)}")
            elif triggers is not DEFAULT_TRIGGERS:
                problems.append("give triggers or trigger_preset, not both")
            else:
                triggers = TRIGGER_PRESETS[trigger_preset]
        if isinstance(triggers, str) or not triggers or not all(isinstance(t, str) and t for t in triggers):
            problems.append("triggers must be a non-empty list of non-empty strings")
        if problems:
            raise ValueError("; ".join(problems))
        super().__init__(max_tokens=max_tokens, **kwargs)
        self.n, self.b0, self.gamma = n, b0, float(gamma)
        self.triggers = list(triggers)
        self.trigger_order, self.policy, self.aggregate, self.scorer = trigger_order, policy, aggregate, scorer
        self.schedule, self.align, self.align_max_tokens = schedule, align, align_max_tokens
        self.count_triggers = bool(count_triggers)
        make = budget_boundaries if schedule == "budget" else segment_boundaries
        self.boundaries = make(b0, self.gamma, max_tokens)

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
        branches = await engine.fork(root, self.n)
        rngs = [random.Random(b.seed) for b in branches]
        sampled, forced = [0] * self.n, [0] * self.n
        before: list[list[str | None]] = [[] for _ in range(self.n)]
        trace: list[dict] = [{"event": "fork", "n": self.n, "boundaries": list(self.boundaries),
                              "schedule": self.schedule}]

        def spent(i: int) -> int:  # what counts against max_tokens
            return sampled[i] + (forced[i] if self.count_triggers else 0)

        active = list(range(self.n))
        while active:
            limits = [self._next_stop(spent(i)) - spent(i) for i in active]
            outs = await engine.decode([branches[i] for i in active], limits, self.sampler, self.stop)
            for i, out in zip(active, outs):
                sampled[i] += len(out)
            if self.align == "line":
                await self._align([branches[i] for i in active if branches[i].stop_reason == "length"
                                   and spent(i) < self.max_tokens], engine, sampled, branches)
            to_trigger = []
            for i, out in zip(active, outs):
                b = branches[i]
                if spent(i) >= self.max_tokens or b.stop_reason == "context":
                    continue
                if b.stop_reason in ("length", "line"):
                    to_trigger.append((i, "boundary"))
                elif self.policy == "force" and out:  # an early end replaced by a trigger
                    to_trigger.append((i, "early_stop"))
            if to_trigger:
                bs, ids = [], []
                for i, reason in to_trigger:
                    k = len(before[i])
                    t = k % len(self.triggers) if self.trigger_order == "cycle" else rngs[i].randrange(len(self.triggers))
                    if branches[i].length + len(trigger_ids[t]) >= engine.max_context:
                        branches[i].stop_reason = "context"  # no room for the trigger and one more token
                        continue
                    answer = extract_answer(model_text(branches[i]), explicit=True)
                    before[i].append(answer)
                    trace.append({"event": "trigger", "sample": i, "position": sampled[i], "reason": reason,
                                  "trigger": self.triggers[t], "answer_before": answer})
                    bs.append(branches[i])
                    ids.append(trigger_ids[t])
                    forced[i] += len(trigger_ids[t])
                if bs:
                    await engine.extend(bs, ids)
            active = [i for i, _ in to_trigger if branches[i].stop_reason != "context" and spent(i) < self.max_tokens]
        samples = [make_sample(b, g, answers_before_triggers=a, tokens_forced=f)
                   for b, g, a, f in zip(branches, sampled, before, forced)]
        for i, s in enumerate(samples):
            trace.append({"event": "answer", "sample": i, "answer": s.answer, "stop": s.stop_reason,
                          "tokens": s.tokens_generated, "tokens_forced": s.tokens_forced})
        chosen = self._choose(branches, samples, trace)
        trace.append({"event": "choose", "sample": chosen, "aggregate": self.aggregate})
        return self.result(prompt, samples[chosen], samples, trace)

    async def _align(self, bs: list[Branch], engine: SearchEngine, sampled: list[int], branches: list[Branch]) -> None:
        """Decode each of `bs` (stopped at a boundary) to the end of its line, at most
        `align_max_tokens` more (and never past `max_tokens`); a row that ended its line has
        stop reason "line"."""
        if not bs:
            return
        idx = [branches.index(b) for b in bs]
        room = [min(self.align_max_tokens, self.max_tokens - sampled[i]) for i in idx]
        line = Stop(eos_ids=self.stop.eos_ids, strings=("\n",))
        outs = await engine.decode(bs, room, self.sampler, line)
        for i, b, out in zip(idx, bs, outs):
            sampled[i] += len(out)
            if b.stop_reason == "stop_string":
                b.stop_reason = "stop_string" if self.stop.hit(engine.tokenizer, out) else "line"

    def _choose(self, branches, samples, trace) -> int:
        if self.aggregate == "majority":
            return vote(samples)
        if self.aggregate == "best_of_n":
            return best_of(samples, branches, self.scorer, trace)
        return 0
