"""Step scorers for verifier-guided search (weighted best-of-N, step-level beam search, DVTS).

A solution is split into steps at a delimiter ("\\n\\n" by default, `split_steps`). A step scorer
gives one score in [0, 1] per step so far, for many candidate solutions at once:

    async score_steps(engine, prompt, candidates: list[list[str]]) -> list[list[float]]

`engine` is the calling search's `SearchEngine` (scorers that use the searched model run their
forwards through it, so the scoring of concurrent searches shares the scheduler's forwards).
Scores of a candidate's steps are aggregated with `aggregate` ("last", "min", "prod"), as in HF's
search-and-learn.

- `LogProbScorer`: exp(mean token log-prob) of each step under the searched model (no extra model;
  the log-probs were recorded when the step was sampled, so nothing is forwarded).
- `SelfJudgeScorer`: the searched model judges each step with the `math_step` A/B self-judge of
  RAIN (both option orders, its few-shot prefix prefilled once), mapped from [-1, 1] to [0, 1].
- `PRMScorer`: an HF process reward model, two conventions:
  * ``"step_token"`` (RLHFlow / Math-Shepherd style, e.g. ``RLHFlow/Llama3.1-8B-PRM-Deepseek-Data``,
    ``peiyi9979/math-shepherd-mistral-7b-prm``): a causal LM; each step is followed by `step_tag`, and
    the step's score is P(good) / (P(good) + P(bad)) of the next token at the tag ("+"/"-").
  * ``"token_classification"`` (Qwen-PRM style, e.g. ``Qwen/Qwen2.5-Math-PRM-7B``): a model with a
    2-class token head; each step ends with `step_tag` (``"<extra_0>"`` for Qwen) and the step's score
    is the class-1 probability at that token.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch

from decodesearch.scoring.judge import SelfJudge

AGGREGATES = ("last", "min", "prod")
DEFAULT_DELIMITER = "\n\n"


def split_steps(text: str, delimiter: str = DEFAULT_DELIMITER) -> list[str]:
    """The non-empty steps of `text` separated by `delimiter` (surrounding whitespace kept inside)."""
    return [s for s in text.split(delimiter) if s.strip()]


def aggregate(scores: Sequence[float], how: str = "last") -> float:
    """One score from a candidate's step scores: the last, the minimum or the product (0 when none)."""
    if how not in AGGREGATES:
        raise ValueError(f"aggregate={how!r} is not accepted; choose one of {', '.join(AGGREGATES)}")
    if not scores:
        return 0.0
    if how == "last":
        return float(scores[-1])
    if how == "min":
        return float(min(scores))
    return float(math.prod(scores))


class StepScorer(Protocol):
    """One score in [0, 1] per step of each candidate (see the module docstring)."""

    async def score_steps(self, engine, prompt: str, candidates: list[list[str]]) -> list[list[float]]: ...


class LogProbScorer:
    """exp(mean token log-prob) of each step, from the log-probs recorded at sampling time. The
    strategy passes them as `logprobs` (one list of token log-probs per step of each candidate)."""

    needs_logprobs = True

    async def score_steps(self, engine, prompt: str, candidates: list[list[str]],
                          logprobs: list[list[list[float]]] | None = None) -> list[list[float]]:
        if logprobs is None:
            raise ValueError("LogProbScorer needs the steps' token log-probs (logprobs=...)")
        return [[math.exp(sum(lp) / len(lp)) if lp else 0.0 for lp in steps] for steps in logprobs]


class SelfJudgeScorer:
    """The searched model's own A/B judgement of each step (RAIN's `math_step` self-judge): the text
    up to and including step k is judged "is the last step correct?", v in {-1, 0, 1} -> (v + 1) / 2.
    Texts are memoised, so a step already judged for a shorter candidate costs nothing again."""

    def __init__(self, judge: SelfJudge | None = None, delimiter: str = DEFAULT_DELIMITER):
        self.judge = judge or SelfJudge("math_step")
        self.delimiter = delimiter

    @property
    def rows_needed(self) -> int:
        return self.judge.rows_needed + 1

    def context_tokens(self, tokenizer, text_tokens: int) -> int:
        return self.judge.context_tokens(tokenizer, text_tokens)

    def prepare(self, engine) -> bool:
        return self.judge.prepare(engine)

    def release(self, engine) -> None:
        self.judge.release(engine)

    async def score_steps(self, engine, prompt: str, candidates: list[list[str]]) -> list[list[float]]:
        fmt = self.judge.context_format
        texts = [[fmt.replace("{prompt}", prompt).replace("{response}", self.delimiter.join(steps[: k + 1]))
                  for k in range(len(steps))] for steps in candidates]
        flat = [t for ts in texts for t in ts]
        values = await self.judge.evaluate(engine, flat) if flat else []
        out, i = [], 0
        for ts in texts:
            out.append([(v + 1.0) / 2.0 for v in values[i : i + len(ts)]])
            i += len(ts)
        return out


PRM_CONVENTIONS = ("step_token", "token_classification")


class PRMScorer:
    """A process reward model loaded with transformers (see the module docstring for the two
    conventions). `model` is an HF id, a local folder, or an already-loaded model (then `tokenizer`
    too). The PRM reads `prompt` + the steps joined by `step_tag` (plus `step_tag` after the last
    step) and scores every step in one forward per candidate batch."""

    def __init__(self, model, tokenizer=None, *, convention: str = "step_token", step_tag: str = "\n\n",
                 good_token: str = "+", bad_token: str = "-", device: str | None = None, dtype="auto",
                 batch_size: int = 8):
        if convention not in PRM_CONVENTIONS:
            raise ValueError(f"convention={convention!r} is not accepted; choose one of {', '.join(PRM_CONVENTIONS)}")
        if isinstance(model, str):
            from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

            cls = AutoModelForCausalLM if convention == "step_token" else AutoModelForTokenClassification
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = cls.from_pretrained(model, dtype=dtype)
            if device:
                model = model.to(device)
        if tokenizer is None:
            raise ValueError("PRMScorer with a loaded model needs its tokenizer")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.convention, self.step_tag, self.batch_size = convention, step_tag, batch_size
        tag = tokenizer.encode(step_tag, add_special_tokens=False)
        if len(tag) != 1:
            raise ValueError(f"step_tag={step_tag!r} is {len(tag)} tokens for this tokenizer; accepted: exactly one")
        self.tag_id = tag[0]
        if convention == "step_token":
            ids = [tokenizer.encode(t, add_special_tokens=False) for t in (good_token, bad_token)]
            if any(len(x) != 1 for x in ids) or ids[0] == ids[1]:
                raise ValueError(f"good_token={good_token!r} / bad_token={bad_token!r} must be two different "
                                 "single tokens")
            self.good_id, self.bad_id = ids[0][0], ids[1][0]

    def encode(self, prompt: str, steps: list[str]) -> tuple[list[int], list[int]]:
        """Token ids of prompt + steps with a tag after each step, and the tag positions."""
        tok = self.tokenizer
        ids = list(tok.encode(prompt + self.step_tag, add_special_tokens=True))
        tags = []
        for step in steps:
            ids += list(tok.encode(step.strip(), add_special_tokens=False)) + [self.tag_id]
            tags.append(len(ids) - 1)
        return ids, tags

    @torch.no_grad()
    def _score(self, prompt: str, candidates: list[list[str]]) -> list[list[float]]:
        out: list[list[float]] = []
        dev = next(self.model.parameters()).device
        for i in range(0, len(candidates), self.batch_size):
            enc = [self.encode(prompt, steps) for steps in candidates[i : i + self.batch_size]]
            width = max(len(ids) for ids, _ in enc)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in enc], device=dev)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in enc], device=dev)
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits.float()
            for row, (_, tags) in enumerate(enc):
                at = logits[row, tags]
                if self.convention == "step_token":
                    pair = torch.softmax(at[:, [self.good_id, self.bad_id]], dim=-1)[:, 0]
                else:
                    pair = torch.softmax(at[:, :2], dim=-1)[:, 1]
                out.append(pair.tolist())
        return out

    async def score_steps(self, engine, prompt: str, candidates: list[list[str]]) -> list[list[float]]:
        return self._score(prompt, candidates)


def make_step_scorer(spec, delimiter: str = DEFAULT_DELIMITER):
    """A step scorer from a spec: ``"self_judge"``, ``"logprob"``, ``"prm:<id or path>"`` (step-token
    convention), ``"prm-cls:<id or path>"`` (token-classification convention), or an object with
    ``score_steps`` (returned as is)."""
    if hasattr(spec, "score_steps"):
        return spec
    if spec == "self_judge":
        return SelfJudgeScorer(delimiter=delimiter)
    if spec == "logprob":
        return LogProbScorer()
    if isinstance(spec, str) and spec.startswith(("prm:", "prm-cls:")):
        kind, _, path = spec.partition(":")
        return PRMScorer(path, convention="step_token" if kind == "prm" else "token_classification")
    raise ValueError(f"scorer={spec!r} is not accepted; choose self_judge, logprob, prm:<path>, prm-cls:<path>, "
                     "or an object with score_steps")
