"""Typed trace events: what a search records in `SearchResult.trace`, one small dataclass per kind.

Every event has its kind's name in `event` (a class attribute, readable on instances:
`e.event == "trigger"`, or `isinstance(e, TriggerEvent)`) and `as_dict()`, the record written to
results files: `{"event": name, **fields}` in field order. A field whose default is None is
optional: it is left out of `as_dict()` while None (a strategy that does not write it). A field
marked `spread` (a dict of counters) is written key by key in its place, not as one nested dict.

Who writes what:

- `fork` (sampling, best-of-N, IDS, beam search, DVTS): the samples or beams started;
- `answer` (sampling, IDS, budget forcing): a sample's final answer and stop reason;
- `score` (best-of-N, IDS with a scorer): a sample's score; `choose`: the sample returned;
- `trigger` (IDS, budget forcing): a self-correction trigger inserted at `position` sampled tokens;
- `think`, `rewind`, `context`, `answer_cue` (budget forcing): a thinking round, the end-of-thinking
  text cut off, no room left in the context, the answer cue forced;
- `think_end` (IDS): a sample closed its thinking span;
- `step` (beam search, DVTS): one round of scoring and pruning;
- `search`, `commit`, `engine_stats`, `done` (RAIN): one inner search (with `trace_searches`), one
  committed token set, the search's engine counters, the end of the search.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

SPREAD = "spread"  # field metadata: a dict written key by key into `as_dict()`


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of the trace events; `event` is the kind's name (a class attribute)."""

    event: ClassVar[str] = ""

    def as_dict(self) -> dict[str, Any]:
        """The record as results files hold it: `{"event": name, **fields}` in field order; an
        optional field (default None) is left out while None, a `spread` dict is written inline."""
        out: dict[str, Any] = {"event": self.event}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get(SPREAD):
                out.update(value)
            elif value is not None or f.default is not None:
                out[f.name] = value
        return out


@dataclass(frozen=True, kw_only=True)
class ForkEvent(Event):
    """`n` samples or beams started; IDS adds its `boundaries`, `schedule` and whether it found a
    thinking span (`think`); beam search and DVTS their `beam_width`."""

    event: ClassVar[str] = "fork"
    n: int
    beam_width: int | None = None
    boundaries: list[int] | None = None
    schedule: str | None = None
    think: bool | None = None


@dataclass(frozen=True, kw_only=True)
class AnswerEvent(Event):
    """A sample's final answer (None: it stated none) and stop reason; `sample` is its index (left
    out with a single sample, budget forcing); `tokens` it sampled, `tokens_forced` it was given."""

    event: ClassVar[str] = "answer"
    sample: int | None = None
    answer: str | None
    stop: str | None
    tokens: int | None = None
    tokens_forced: int | None = None


@dataclass(frozen=True, kw_only=True)
class ScoreEvent(Event):
    """Sample `sample`'s score; `steps`: how many steps a step scorer scored."""

    event: ClassVar[str] = "score"
    sample: int
    score: float
    steps: int | None = None


@dataclass(frozen=True, kw_only=True)
class ChooseEvent(Event):
    """The sample returned; IDS adds its `aggregate`, beam search and DVTS their `final` rule."""

    event: ClassVar[str] = "choose"
    sample: int
    aggregate: str | None = None
    final: str | None = None


@dataclass(frozen=True, kw_only=True)
class TriggerEvent(Event):
    """Trigger text `trigger` inserted after `position` sampled tokens; `answer_before` is the answer
    the sample had stated explicitly just before (None: none). IDS adds the `sample` and the
    `reason` ("boundary", "early_stop", "think_end"); budget forcing writes neither (one sample,
    always forced)."""

    event: ClassVar[str] = "trigger"
    sample: int | None = None
    position: int
    reason: str | None = None
    trigger: str
    answer_before: str | None


@dataclass(frozen=True, kw_only=True)
class ThinkEndEvent(Event):
    """IDS: sample `sample` closed its thinking span after `position` sampled tokens (and keeps it)."""

    event: ClassVar[str] = "think_end"
    sample: int
    position: int


@dataclass(frozen=True, kw_only=True)
class ThinkEvent(Event):
    """Budget forcing: one thinking round decoded `tokens` tokens and stopped for `stop`."""

    event: ClassVar[str] = "think"
    tokens: int
    stop: str | None


@dataclass(frozen=True, kw_only=True)
class RewindEvent(Event):
    """Budget forcing: the end-of-thinking text's last `tokens` tokens were cut off."""

    event: ClassVar[str] = "rewind"
    tokens: int


@dataclass(frozen=True, kw_only=True)
class ContextEvent(Event):
    """Budget forcing: after `position` thinking tokens the context had no room for another trigger."""

    event: ClassVar[str] = "context"
    position: int


@dataclass(frozen=True, kw_only=True)
class AnswerCueEvent(Event):
    """Budget forcing: the answer cue was forced after `position` thinking tokens."""

    event: ClassVar[str] = "answer_cue"
    position: int


@dataclass(frozen=True, kw_only=True)
class StepEvent(Event):
    """Beam search, DVTS: round `step` scored the active beams (`scores`, rounded), `finished` of
    them ended and `kept` go on."""

    event: ClassVar[str] = "step"
    step: int
    scores: list[float]
    finished: int
    kept: int


@dataclass(frozen=True, kw_only=True)
class SearchEvent(Event):
    """RAIN (`trace_searches`): inner search number `search` reached a leaf at `depth` (its
    `leaf_tokens`), rolled out `rollout_tokens` tokens and backed up `value`."""

    event: ClassVar[str] = "search"
    search: int
    depth: int
    leaf_tokens: list[int]
    rollout_tokens: int
    value: float
    terminal: bool


@dataclass(frozen=True, kw_only=True)
class CommitEvent(Event):
    """RAIN: commit number `commit`, after `searches` inner searches: the root's children (`children`,
    one summary dict each) and the `chosen` one's tokens and text; `counters` (spread inline) are
    the search counters' increase over this commit, `tokens_forwarded` and `forward_calls` the
    engine's."""

    event: ClassVar[str] = "commit"
    commit: int
    searches: int
    root_visits: int
    children: list[dict[str, Any]]
    chosen: int
    committed_tokens: list[int]
    committed_text: str
    response_tokens: int
    counters: dict[str, int] = field(default_factory=dict, metadata={SPREAD: True})
    tokens_forwarded: int
    forward_calls: int


@dataclass(frozen=True, kw_only=True)
class EngineStatsEvent(Event):
    """RAIN: this search's engine counters (`SearchStats.as_dict()`, spread inline)."""

    event: ClassVar[str] = "engine_stats"
    stats: dict[str, int] = field(default_factory=dict, metadata={SPREAD: True})


@dataclass(frozen=True, kw_only=True)
class DoneEvent(Event):
    """RAIN: the search ended for `stop_reason` after `commits` commits and `searches` inner searches;
    `counters` (spread inline) are the search counters' totals, `evaluator` the evaluator's stats,
    `embedder` the embedder's class name (None: none)."""

    event: ClassVar[str] = "done"
    stop_reason: str | None
    commits: int
    searches: int
    counters: dict[str, int] = field(default_factory=dict, metadata={SPREAD: True})
    evaluator: dict[str, Any]
    embedder: str | None


__all__ = [
    "AnswerCueEvent", "AnswerEvent", "ChooseEvent", "CommitEvent", "ContextEvent", "DoneEvent", "EngineStatsEvent",
    "Event", "ForkEvent", "RewindEvent", "ScoreEvent", "SearchEvent", "StepEvent", "ThinkEndEvent", "ThinkEvent",
    "TriggerEvent",
]
