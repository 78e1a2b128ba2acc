"""What every strategy shares: the result record, the trace, prompt formatting, the run loop.

A strategy is one class. Subclasses implement `async search(engine, root, prompt) -> SearchResult`
for one prefilled prompt, on a `SearchEngine` (await `fork`, `extend`, `decode`), and declare
`peak_rows()`. `run(engine, prompts)` runs the searches of all prompts concurrently on one engine
(`Scheduler`: one forward per step for all of them); each result is timed, counts the tokens its
search had forwarded, and every branch a search created is released when it ends, even on error.
Results do not depend on the concurrency: prompt i's root seed is `derive_seed(seed, i)`.

Settings. Each strategy declares `settings_class`, a frozen dataclass (a `StrategySettings`
subclass) whose fields, with type hints and defaults, are its options, validated in
`__post_init__` (``"{name}={value!r} is out of range; accepted: ..."``). The constructor takes the
same keywords and builds `strategy.settings` from them; only runtime objects stay constructor
arguments (`progress`, a callback). One mechanism reads and changes them:
- `strategy.x` reads `strategy.settings.x` (strategy code reads its settings this way too), except
  where a strategy builds a runtime object from a setting that names one (BestOfN's `step_scorer`,
  BeamSearch's `scorer`, RAIN's `evaluator`): that attribute is the built object, and
  `settings.<name>` keeps what was given.
- `strategy.x = v` replaces `settings` by the validated copy `strategy.revise(x=v)`; every change of
  `settings` calls `settings_changed(old)`, where a strategy rebuilds what it derives from them.
`decodesearch.options` derives the CLI flags, `--opt` and lm-eval's model args from the fields, and
results headers record `settings.as_config()`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, ClassVar, Iterator, Sequence

from decodesearch.engine import Branch, Engine, Sampler, Stop, derive_seed
from decodesearch.engine.scheduler import Finished, Job, Scheduler, SearchEngine
from decodesearch.scoring.answers import extract_answer
from decodesearch.strategies.trace import Event

DEFAULT_INSTRUCTION = "Solve the problem step by step. Put your final answer within \\boxed{}."


@dataclass
class Sample:
    """One sampled continuation. `answer` is found in the model's own tokens only (`model_text`).
    `answers_before_triggers[i]` is the answer the model had stated explicitly (a `\\boxed{}` or a
    "final answer is" phrase) just before the i-th self-correction trigger was inserted (IDS,
    budget forcing), None if it had stated none; empty without triggers. `tokens_generated`
    counts sampled tokens, `tokens_forced` teacher-forced ones (triggers, cues)."""

    text: str
    answer: str | None
    tokens_generated: int
    token_ids: list[int] = field(default_factory=list)
    stop_reason: str | None = None
    answers_before_triggers: list[str | None] = field(default_factory=list)
    score: float | None = None
    tokens_forced: int = 0


@dataclass
class SearchResult:
    """The outcome of a search on one prompt. `text`/`answer`/`token_ids` are the final choice;
    `trace` is a list of events (`decodesearch.strategies.trace`: fork, trigger, rewind, score, answer,
    ...; each names its kind in `event`; `as_dict()` here writes each as its `as_dict()`). Token
    counts are per prompt; `tokens_forwarded` counts the tokens this search gave the engine to forward
    (prefill, extend, decode: on `Engine` exactly what was forwarded for it; a `Reencode` backend's
    re-encoding shows in its `engine.stats` only)."""

    prompt: str
    text: str
    answer: str | None
    samples: list[Sample]
    trace: list[Event]
    tokens_generated: int
    tokens_forwarded: int
    wall_s: float
    strategy: str
    token_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(replace(self, trace=[]))
        out["trace"] = copy.deepcopy([e.as_dict() for e in self.trace])
        return out


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


def check_choice(name: str, value, allowed: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not accepted; choose one of {', '.join(allowed)}")


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def _jsonable(value: Any) -> Any:
    """`value` as JSON values: dataclasses as dicts, sequences and sets as lists, other objects
    (callables, scorer objects) by their qualified name."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    named = value if hasattr(value, "__qualname__") else type(value)
    return f"{named.__module__}.{named.__qualname__}"


@dataclass(frozen=True)
class StrategySettings:
    """What every strategy is given: `max_tokens` bounds the new tokens of each sample; `sampler`,
    `prompt_format` and `stop` (None: the field's default, which a strategy's settings may change),
    and the root `seed` (None: the engine's). Subclasses add fields and extend `__post_init__`."""

    max_tokens: int = 512
    sampler: Sampler | None = Sampler(temperature=0.7, top_p=0.95)
    prompt_format: PromptFormat | None = PromptFormat()
    stop: Stop | None = Stop()
    seed: int | None = None

    def __post_init__(self):
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, kind in (("sampler", Sampler), ("prompt_format", PromptFormat), ("stop", Stop)):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, defaults[name])
            elif not isinstance(value, kind):
                raise ValueError(f"{name}={value!r} is not accepted; expected a {kind.__module__}.{kind.__name__}")
        check_positive_int("max_tokens", self.max_tokens)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed={self.seed!r} is out of range; accepted: an int or None")

    @classmethod
    def names(cls) -> frozenset[str]:
        """The field names."""
        return _field_names(cls)

    def as_config(self) -> dict[str, Any]:
        """Every field as JSON values (the results header's ``settings``; objects by qualified name)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


class Strategy:
    """Base of all strategies. `Strategy(progress=None, **settings)`: `settings` are the fields of
    `settings_class` (see the module docstring); `progress(done, total)` is called as prompts finish."""

    name = "strategy"
    settings_class: ClassVar[type[StrategySettings]] = StrategySettings

    def __init__(self, *, progress: Callable[[int, int], None] | None = None, **settings):
        unknown = sorted(set(settings) - self.settings_class.names())
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
        self.progress = progress
        self.settings = self.settings_class(**settings)

    def __getattr__(self, name: str):
        # Only called for names not found on the object: a setting reads through (`ids.n`).
        settings = self.__dict__.get("settings")
        if settings is not None and name in settings.names():
            return getattr(settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name in self.settings_class.names():
            name, value = "settings", self.revise(**{name: value})
        old = self.__dict__.get("settings")
        object.__setattr__(self, name, value)
        if name == "settings":
            self.settings_changed(old)

    def settings_changed(self, old: StrategySettings | None) -> None:
        """Rebuild what this strategy derives from `settings` (objects built from a spec), after they
        changed from `old` (None: on construction). Default: nothing is derived."""

    def revise(self, **changes) -> StrategySettings:
        """This strategy's settings with `changes`, validated (what `strategy.x = v` installs)."""
        return replace(self.settings, **changes)

    def forced_texts(self) -> tuple[str, ...]:
        """Texts this strategy teacher-forces into a sample (triggers, cues). They are not the
        model's words: a caller's stop strings must not match inside them."""
        return ()

    def forced_insertions(self) -> int:
        """How many times one sample may have a `forced_texts` entry inserted."""
        return 0

    def peak_cols(self, tokenizer, prompt_len: int) -> int:
        """The longest branch, in tokens, one search on a `prompt_len`-token prompt may hold (for
        admission under `max_kv_bytes`): the prompt, `max_tokens`, each forced insertion at the
        longest forced text, and the shared judge's context (`context_tokens`) where there is one."""
        forced = max((len(tokenizer.encode(t, add_special_tokens=False)) for t in self.forced_texts()), default=0)
        cols = prompt_len + self.max_tokens + self.forced_insertions() * forced
        judge = self.shared_judge()
        if judge is not None and hasattr(judge, "context_tokens"):
            cols = max(cols, judge.context_tokens(tokenizer, cols))
        return cols

    def peak_rows(self, max_rows: int) -> int:
        """The most engine rows one search holds at once (its root included), on an engine of
        `max_rows` rows (a strategy that caches may size its cache to it)."""
        return 2

    def run(self, engine: Engine, prompts: str | Sequence[str], *, seeds: Sequence[int] | None = None,
            concurrency: int | None = None) -> list[SearchResult]:
        """One `SearchResult` per prompt (formatted with `prompt_format`), all searched concurrently
        on `engine`. The first failed search raises (after every other search was stopped)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = [self.prompt_format.encode(engine.tokenizer, p) for p in prompts]
        return self.run_ids(engine, ids, prompts, seeds=seeds, concurrency=concurrency)

    def run_ids(self, engine: Engine, ids: Sequence[Sequence[int]], prompts: Sequence[str] | None = None, *,
                seeds: Sequence[int] | None = None, concurrency: int | None = None) -> list[SearchResult]:
        """As `run`, from already-encoded prompt ids (`prompts`: the texts recorded in the results)."""
        results: list[SearchResult | None] = [None] * len(ids)
        done = 0
        for f in self.stream(engine, ids, prompts, seeds=seeds, concurrency=concurrency):
            if f.error is not None:
                raise f.error
            results[f.index] = f.result
            done += 1
            if self.progress:
                self.progress(done, len(ids))
        return results

    def stream(self, engine: Engine, ids: Sequence[Sequence[int]], prompts: Sequence[str] | None = None, *,
               seeds: Sequence[int] | None = None, concurrency: int | None = None) -> Iterator[Finished]:
        """Search every prompt concurrently; yield a `Finished` per prompt as it ends (its `result` a
        `SearchResult`, or its `error`). `seeds[i]` is prompt i's root seed (default:
        `derive_seed(self.seed or engine.seed, i)`)."""
        for _, f in stream_searches(engine, [self.searches(engine, ids, prompts, seeds)], concurrency):
            yield f

    def searches(self, engine: Engine, ids: Sequence[Sequence[int]], prompts: Sequence[str] | None = None,
                 seeds: Sequence[int] | None = None) -> Searches:
        """This strategy's searches of `ids` (see `stream`), to run with others in `stream_searches`."""
        prompts = list(prompts) if prompts is not None else [engine.tokenizer.decode(list(x)) for x in ids]
        if len(prompts) != len(ids):
            raise ValueError(f"prompts has {len(prompts)} entries; expected one per ids ({len(ids)})")
        if seeds is None:
            base = self.seed if self.seed is not None else engine.seed
            seeds = [derive_seed(base, i) for i in range(len(ids))]
        elif len(seeds) != len(ids):
            raise ValueError(f"seeds has {len(seeds)} entries; expected one per prompt ({len(ids)})")
        rows = self.peak_rows(engine.max_rows)
        jobs = [Job(lambda ctx, x=list(x), p=p, s=int(s): self.solve(ctx, x, p, s), rows,
                    self.peak_cols(engine.tokenizer, len(x)))
                for x, p, s in zip(ids, prompts, seeds)]
        return Searches(self, jobs)

    def shared_judge(self):
        """The evaluator or scorer whose prefix all searches of a run share (it has `prepare(engine)`
        and `release(engine)`), or None."""
        return None

    @contextlib.contextmanager
    def session(self, engine: Engine):
        """Around a batch of searches on `engine`: the shared judge prefix is prefilled once for all
        of them and released after (unless it was live already)."""
        judge = self.shared_judge()
        prepare = getattr(judge, "prepare", None)
        owned = prepare(engine) if prepare is not None else False
        try:
            yield
        finally:
            if owned:
                judge.release(engine)

    async def solve(self, engine: SearchEngine, ids: list[int], prompt: str, seed: int) -> SearchResult:
        """Prefill `ids` as the root (seeded with `seed`) and search from it."""
        root = await engine.prefill(ids, seed=seed)
        return await self.search(engine, root, prompt)

    async def search(self, engine: SearchEngine, root: Branch, prompt: str) -> SearchResult:
        raise NotImplementedError

    def result(self, prompt: str, chosen: Sample, samples: list[Sample], trace: list[Event]) -> SearchResult:
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


@dataclass
class Searches:
    """One strategy's searches (`Strategy.searches`): a job per prompt, in prompt order."""

    strategy: Strategy
    jobs: list[Job]


def stream_searches(engine: Engine, groups: Sequence[Searches], concurrency: int | None = None
                    ) -> Iterator[tuple[int, Finished]]:
    """Run the searches of several strategies together on `engine`: one `Scheduler`, so every step
    forwards the rows of all of them at once. Yields `(group index, Finished)` as each search ends,
    the `Finished.index` counting within its group. Each strategy's shared judge prefix is prefilled
    once for the whole run (`Strategy.session`). Results equal those of each group run alone."""
    owner = [(g, i) for g, group in enumerate(groups) for i in range(len(group.jobs))]
    jobs = [job for group in groups for job in group.jobs]
    with contextlib.ExitStack() as sessions:
        for group in groups:
            sessions.enter_context(group.strategy.session(engine))
        for f in Scheduler(engine, concurrency).run(jobs):
            g, i = owner[f.index]
            f.index = i
            if f.result is not None:
                f.result.tokens_forwarded = f.stats.tokens_forwarded
                f.result.wall_s = f.wall_s
            yield g, f


def model_text(branch: Branch) -> str:
    """The text of the tokens the model sampled itself after the prompt, each run of them on its own
    line: every teacher-forced span (a trigger, a cue, a judge prompt) is left out, so it can never
    become an answer."""
    runs, run = [], []
    for tok, lp in zip(branch.tokens[branch.prompt_len :], branch.token_logprobs[branch.prompt_len :]):
        if lp is None:
            if run:
                runs.append(run)
            run = []
        else:
            run.append(tok)
    if run:
        runs.append(run)
    return "\n".join(branch.engine.tokenizer.decode(r, skip_special_tokens=True) for r in runs)


def make_sample(branch: Branch, tokens_generated: int, **extra) -> Sample:
    """A `Sample` of `branch`: its whole text, and the answer found in the model's own words."""
    return Sample(text=branch.text, answer=extract_answer(model_text(branch)), tokens_generated=tokens_generated,
                  token_ids=list(branch.new_tokens), stop_reason=branch.stop_reason, **extra)
