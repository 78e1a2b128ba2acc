"""What every strategy shares: the result record, the trace, prompt formatting, the run loop.

A strategy is one class with `run(engine, prompts) -> list[SearchResult]`. Subclasses implement
`search(engine, root, prompt) -> SearchResult` for one prefilled prompt; `run` formats and
prefills each prompt, times it, counts the engine's forwarded tokens, and releases every branch
it created, even on error.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from decodesearch.engine import Branch, Engine, Sampler, Stop
from decodesearch.scoring.answers import extract_answer

DEFAULT_INSTRUCTION = "Solve the problem step by step. Put your final answer within \\boxed{}."


@dataclass
class Sample:
    """One sampled continuation. `answers_before_triggers[i]` is the answer extracted just before
    the i-th self-correction trigger was inserted (IDS, budget forcing); empty otherwise."""

    text: str
    answer: str | None
    tokens_generated: int
    token_ids: list[int] = field(default_factory=list)
    stop_reason: str | None = None
    answers_before_triggers: list[str | None] = field(default_factory=list)
    score: float | None = None


@dataclass
class SearchResult:
    """The outcome of a search on one prompt. `text`/`answer`/`token_ids` are the final choice;
    `trace` is a list of events, each a dict with at least `event` (fork, trigger, rewind, score,
    answer, ...). Token counts are per prompt; `tokens_forwarded` is what the engine forwarded."""

    prompt: str
    text: str
    answer: str | None
    samples: list[Sample]
    trace: list[dict[str, Any]]
    tokens_generated: int
    tokens_forwarded: int
    wall_s: float
    strategy: str
    token_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PromptFormat:
    """How a problem becomes token ids: the instruction is appended to the problem; with `chat`
    the tokenizer's chat template is applied (when it has one), optionally with a system prompt."""

    instruction: str | None = DEFAULT_INSTRUCTION
    system: str | None = None
    chat: bool = True

    def encode(self, tokenizer, problem: str) -> list[int]:
        user = problem if not self.instruction else f"{problem}\n\n{self.instruction}"
        if self.chat and getattr(tokenizer, "chat_template", None):
            messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
                {"role": "user", "content": user}
            ]
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        text = user if not self.system else f"{self.system}\n\n{user}"
        return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def check_positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is out of range; accepted: an int >= {minimum}")


class Strategy:
    """Base of all strategies. `max_tokens` bounds the new tokens of each sample."""

    name = "strategy"

    def __init__(
        self,
        *,
        max_tokens: int = 512,
        sampler: Sampler | None = None,
        prompt_format: PromptFormat | None = None,
        stop: Stop | None = None,
        seed: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ):
        check_positive_int("max_tokens", max_tokens)
        self.max_tokens = max_tokens
        self.sampler = sampler if sampler is not None else self.default_sampler()
        self.prompt_format = prompt_format or PromptFormat()
        self.stop = stop or Stop()
        self.seed = seed
        self.progress = progress

    def default_sampler(self) -> Sampler:
        return Sampler(temperature=0.7, top_p=0.95)

    def forced_texts(self) -> tuple[str, ...]:
        """Texts this strategy teacher-forces into a sample (triggers, cues). They are not the
        model's words: a caller's stop strings must not match inside them."""
        return ()

    def run(self, engine: Engine, prompts: Sequence[str]) -> list[SearchResult]:
        if isinstance(prompts, str):
            prompts = [prompts]
        results = []
        for i, prompt in enumerate(prompts):
            ids = self.prompt_format.encode(engine.tokenizer, prompt)
            results.append(self.run_ids(engine, ids, prompt))
            if self.progress:
                self.progress(i + 1, len(prompts))
        return results

    def run_ids(self, engine: Engine, ids: Sequence[int], prompt: str = "") -> SearchResult:
        """Search from already-encoded prompt ids (used by the HF generate route)."""
        before = set(map(id, engine.live_branches))
        forwarded = engine.stats.tokens_forwarded
        t0 = time.perf_counter()
        try:
            root = engine.prefill(ids, seed=self.seed)
            result = self.search(engine, root, prompt)
        finally:
            for b in engine.live_branches:
                if id(b) not in before:
                    engine.release(b)
        result.tokens_forwarded = engine.stats.tokens_forwarded - forwarded
        result.wall_s = time.perf_counter() - t0
        return result

    def search(self, engine: Engine, root: Branch, prompt: str) -> SearchResult:
        raise NotImplementedError

    def result(self, prompt: str, chosen: Sample, samples: list[Sample], trace: list[dict]) -> SearchResult:
        return SearchResult(
            prompt=prompt,
            text=chosen.text,
            answer=chosen.answer,
            samples=samples,
            trace=trace,
            tokens_generated=sum(s.tokens_generated for s in samples),
            tokens_forwarded=0,
            wall_s=0.0,
            strategy=self.name,
            token_ids=list(chosen.token_ids),
        )


def make_sample(branch: Branch, tokens_generated: int, **extra) -> Sample:
    text = branch.text
    return Sample(text=text, answer=extract_answer(text), tokens_generated=tokens_generated,
                  token_ids=list(branch.new_tokens), stop_reason=branch.stop_reason, **extra)
