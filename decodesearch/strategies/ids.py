"""Iterative Deepening Sampling (IDS, arXiv 2502.05449) on the engine.

`n` samples fork from ONE prefill of the prompt. Each sample generates in segments whose lengths
grow geometrically, `b0, b0*gamma, b0*gamma^2, ...` (each rounded to whole tokens), until
`max_tokens` sampled tokens. At every segment boundary a sample reaches while still generating, a
self-correction trigger sentence is teacher-forced with `extend` and generation continues. A
sample that stops early (EOS or a stop string) is accepted (`policy="accept"`), or with
`policy="force"` gets a trigger in place of its end (s1-style) and continues until the budget is
spent. Trigger tokens are not counted against `max_tokens`. The answer extracted just before each
trigger is kept (`Sample.answers_before_triggers`, and in the trace). Final answer by majority
vote, best-of-N by a scorer, or none (the first sample).

Defaults, and why (the paper's exact values could not be read here):
- n=4: the largest sample count that keeps a CPU benchmark of small models practical while a
  majority vote still means something.
- b0=128, gamma=2: a first attempt at a MATH-style problem by a small instruct model is ~100-250
  tokens, so the first trigger lands around the first answer; doubling keeps the number of
  triggers logarithmic in the budget (3 triggers for 1024 tokens: after 128, 384 and 896 tokens).
- max_tokens=1024, policy="accept" (forcing spends the whole budget on every sample),
  aggregate="majority" (self-consistency over the final answers), triggers cycled in order.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

from decodesearch.engine import Branch
from decodesearch.engine.scheduler import SearchEngine
from decodesearch.scoring.answers import extract_answer
from decodesearch.strategies.base import SearchResult, Strategy, check_positive_int, make_sample
from decodesearch.strategies.sampling import best_of, vote

DEFAULT_TRIGGERS = (
    "\n\nWait, let me double-check the previous steps for mistakes.\n",
    "\n\nHmm, let me re-examine my reasoning to make sure the final answer is correct.\n",
)
POLICIES = ("accept", "force")
AGGREGATES = ("majority", "best_of_n", "none")
TRIGGER_ORDERS = ("cycle", "random")


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
        b0: int = 128,
        gamma: float = 2.0,
        max_tokens: int = 1024,
        triggers: Sequence[str] = DEFAULT_TRIGGERS,
        trigger_order: str = "cycle",
        policy: str = "accept",
        aggregate: str = "majority",
        scorer: Callable[[str], float] | None = None,
        **kwargs,
    ):
        check_positive_int("n", n)
        check_positive_int("b0", b0)
        check_positive_int("max_tokens", max_tokens)
        if b0 > max_tokens:
            raise ValueError(f"b0={b0} is out of range; accepted: 1..max_tokens ({max_tokens})")
        if not isinstance(gamma, (int, float)) or not gamma > 1:
            raise ValueError(f"gamma={gamma!r} is out of range; accepted: a number > 1")
        if isinstance(triggers, str) or not triggers or not all(isinstance(t, str) and t for t in triggers):
            raise ValueError("triggers must be a non-empty list of non-empty strings")
        for name, value, allowed in (
            ("trigger_order", trigger_order, TRIGGER_ORDERS),
            ("policy", policy, POLICIES),
            ("aggregate", aggregate, AGGREGATES),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not accepted; choose one of {', '.join(allowed)}")
        super().__init__(max_tokens=max_tokens, **kwargs)
        self.n, self.b0, self.gamma = n, b0, float(gamma)
        self.triggers = list(triggers)
        self.trigger_order, self.policy, self.aggregate, self.scorer = trigger_order, policy, aggregate, scorer
        self.boundaries = segment_boundaries(b0, self.gamma, max_tokens)

    def forced_texts(self) -> tuple[str, ...]:
        return tuple(self.triggers)

    def _next_stop(self, generated: int) -> int:
        return next((p for p in self.boundaries if p > generated), self.max_tokens)

    def peak_rows(self, max_rows: int) -> int:
        return self.n + 1

    async def search(self, engine: SearchEngine, root: Branch, prompt: str) -> SearchResult:
        tok = engine.tokenizer
        trigger_ids = [tok.encode(t, add_special_tokens=False) for t in self.triggers]
        branches = await engine.fork(root, self.n)
        rngs = [random.Random(b.seed) for b in branches]
        generated = [0] * self.n
        before: list[list[str | None]] = [[] for _ in range(self.n)]
        trace: list[dict] = [{"event": "fork", "n": self.n, "boundaries": list(self.boundaries)}]
        active = list(range(self.n))
        while active:
            limits = [self._next_stop(generated[i]) - generated[i] for i in active]
            outs = await engine.decode([branches[i] for i in active], limits, self.sampler, self.stop)
            to_trigger = []
            for i, out in zip(active, outs):
                b = branches[i]
                generated[i] += len(out)
                if generated[i] >= self.max_tokens or b.stop_reason == "context":
                    continue
                if b.stop_reason == "length":
                    to_trigger.append((i, "boundary"))
                elif self.policy == "force" and out:  # an early end replaced by a trigger
                    to_trigger.append((i, "early_stop"))
            if to_trigger:
                bs, ids = [], []
                for i, reason in to_trigger:
                    k = len(before[i])
                    t = k % len(self.triggers) if self.trigger_order == "cycle" else rngs[i].randrange(len(self.triggers))
                    answer = extract_answer(branches[i].text)
                    before[i].append(answer)
                    trace.append({"event": "trigger", "sample": i, "position": generated[i], "reason": reason,
                                  "trigger": self.triggers[t], "answer_before": answer})
                    bs.append(branches[i])
                    ids.append(trigger_ids[t])
                await engine.extend(bs, ids)
            active = [i for i, _ in to_trigger]
        samples = [make_sample(b, g, answers_before_triggers=a) for b, g, a in zip(branches, generated, before)]
        for i, s in enumerate(samples):
            trace.append({"event": "answer", "sample": i, "answer": s.answer, "stop": s.stop_reason,
                          "tokens": s.tokens_generated})
        chosen = self._choose(branches, samples, trace)
        trace.append({"event": "choose", "sample": chosen, "aggregate": self.aggregate})
        return self.result(prompt, samples[chosen], samples, trace)

    def _choose(self, branches, samples, trace) -> int:
        if self.aggregate == "majority":
            return vote(samples)
        if self.aggregate == "best_of_n":
            return best_of(samples, branches, self.scorer, trace)
        return 0
