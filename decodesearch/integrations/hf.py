"""The two user entry points: `generate(model, tokenizer, prompts, strategy=...)` and the HF route
`model.generate(**inputs, custom_generate=custom_generate(strategy, tokenizer))`."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

from decodesearch.engine import Engine
from decodesearch.strategies import SearchResult, Strategy, make_strategy

#: `generate` settings a strategy decides itself (its `sampler`, its search), with the values
#: transformers fills in when nobody set them; any other value was given and is overridden.
SAMPLING_SETTINGS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": None,
                     "typical_p": 1.0, "num_beams": 1, "num_return_sequences": 1, "repetition_penalty": 1.0}


def _sampling_settings_given(config) -> dict:
    """The sampling settings of `generate`'s merged `config` that the caller (or the model's own
    generation config) set to something other than transformers' fallback values."""
    if config is None:
        return {}
    out = {}
    for key, fallback in SAMPLING_SETTINGS.items():
        value = getattr(config, key, None)
        if value is not None and value != fallback:
            out[key] = value
    return out


def _strategy(strategy: str | Strategy, kwargs: dict) -> Strategy:
    if isinstance(strategy, Strategy):
        if kwargs:
            raise ValueError(f"options {sorted(kwargs)} given with a built strategy; pass them to its constructor")
        return strategy
    return make_strategy(strategy, **kwargs)


def generate(
    model,
    tokenizer,
    prompts: str | Sequence[str],
    strategy: str | Strategy = "greedy",
    *,
    engine: Engine | None = None,
    engine_kwargs: dict | None = None,
    concurrency: int | None = None,
    **strategy_kwargs,
) -> list[SearchResult]:
    """Run `strategy` (a name from `STRATEGIES` with its options, or a built `Strategy`) on each
    prompt; one `SearchResult` per prompt, in order. The prompts are searched concurrently on one
    engine (`concurrency`: most searches in flight; None: as many as `max_rows` admits). An
    `engine` may be passed to reuse its memory."""
    strat = _strategy(strategy, strategy_kwargs)
    engine = engine or Engine(model, tokenizer, **(engine_kwargs or {}))
    return strat.run(engine, prompts, concurrency=concurrency)


@dataclass
class SearchGenerateOutput(GenerateDecoderOnlyOutput):
    """`GenerateDecoderOnlyOutput` plus the `SearchResult` (with its trace) of each input row."""

    results: list[SearchResult] | None = None


def custom_generate(strategy: str | Strategy, tokenizer=None, *, engine: Engine | None = None, engine_kwargs: dict | None = None,
       **strategy_kwargs):
    """A callable for `model.generate(**inputs, custom_generate=custom_generate(strategy, tokenizer))`.

    Each input row (left or right padding, read from `attention_mask`) is used as already-formatted
    prompt ids, and the rows are searched concurrently on one engine. Returns `sequences` `[B,
    prompt + new]` (each row's input followed by the chosen sample's tokens, right-padded with the
    pad id); with `return_dict_in_generate=True`, a `SearchGenerateOutput` whose `results` hold the
    traces. `tokenizer` may instead be passed to `generate(tokenizer=...)`. Sampling and stopping
    come from the strategy (its `sampler`, `stop`); `generate`'s `max_new_tokens` (as a keyword or
    in a `generation_config`) caps the strategy's `max_tokens` for that call, and sampling settings
    given to `generate` (`do_sample`, `temperature`, `top_k`, `top_p`, ...) are not used: a warning
    names them. Each call builds an `Engine` from `engine_kwargs`, unless an `engine` over the same
    model is passed to reuse.
    """
    strat = _strategy(strategy, strategy_kwargs)

    def custom_generate(model, input_ids: torch.Tensor, logits_processor=None, stopping_criteria=None,
                        generation_config=None, **model_kwargs: Any):
        overridden = _sampling_settings_given(generation_config)
        if overridden:
            warnings.warn(f"decodesearch: generate settings {overridden} are not used: the {strat.name!r} "
                          f"strategy samples with its own {strat.sampler} (set them on the strategy instead)",
                          UserWarning, stacklevel=3)
        run = capped(strat, getattr(generation_config, "max_new_tokens", None))
        tok = tokenizer or model_kwargs.get("tokenizer")
        if tok is None:
            raise ValueError("custom_generate(strategy) needs a tokenizer: custom_generate(strategy, tokenizer) "
                             "or generate(..., tokenizer=tok)")
        mask = model_kwargs.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask
        eng = engine or Engine(model, tok, **(engine_kwargs or {}))
        if eng.model is not model:
            raise ValueError("custom_generate(strategy, engine=...): the engine was built over another model")
        rows = [[t for t, k in zip(row, keep) if k] for row, keep in zip(input_ids.tolist(), mask.bool().tolist())]
        results = run.run_ids(eng, rows, [tok.decode(ids) for ids in rows])
        pad = generation_config.pad_token_id if generation_config is not None else None
        if pad is None:
            pad = min(eng.eos_ids) if eng.eos_ids else 0
        pad = pad[0] if isinstance(pad, (list, tuple)) else pad
        new = [r.token_ids for r in results]
        width = input_ids.shape[1] + max(map(len, new))
        seqs = torch.full((len(results), width), int(pad), dtype=input_ids.dtype, device=input_ids.device)
        seqs[:, : input_ids.shape[1]] = input_ids
        for i, ids in enumerate(new):
            seqs[i, input_ids.shape[1] : input_ids.shape[1] + len(ids)] = torch.tensor(ids, dtype=input_ids.dtype)
        if generation_config is not None and generation_config.return_dict_in_generate:
            return SearchGenerateOutput(sequences=seqs, results=results)
        return seqs

    return custom_generate


def capped(strategy: Strategy, max_tokens: int | None) -> Strategy:
    """`strategy` with its `max_tokens` lowered to `max_tokens` (a shallow copy; the strategy itself
    when None or not lower; its settings revised, so IDS's `b0` and trigger positions follow)."""
    if max_tokens is None:
        return strategy
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_new_tokens={max_tokens!r} is out of range; accepted: an int >= 1")
    if max_tokens >= strategy.max_tokens:
        return strategy
    out = copy.copy(strategy)
    out.max_tokens = max_tokens
    return out
