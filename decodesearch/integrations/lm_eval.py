"""lm-evaluation-harness model `decodesearch`: HFLM whose `generate_until` runs a decodesearch strategy.

Installing decodesearch makes lm-eval's own command and `simple_evaluate` know the name
`decodesearch` (lm-eval 0.4.x scans no entry points, so a `.pth` hook registers it lazily; see
`lm_eval_plugin.py`):

    lm_eval --model decodesearch \\
        --model_args pretrained=smollm2-135m-instruct,strategy=ids,n=4,b0=64 \\
        --tasks gsm8k --limit 20 --device cpu

    lm_eval.simple_evaluate(model="decodesearch", model_args="pretrained=...,strategy=ids", ...)

Importing this module also registers the model, and `python -m decodesearch.integrations.lm_eval
ARGS` runs lm-eval's CLI after registering it: the routes where `.pth` hooks do not run
(`python -S`, the source tree on PYTHONPATH instead of an install). From Python you can also build
`DecodeSearchLM(...)` and pass the instance.

Model args (strings from `--model_args`, typed by the strategy's settings fields, as the CLI
types its flags: `decodesearch.options`):
- `pretrained`: a decodesearch registry name, a local folder or a hub id, loaded with
  `decodesearch.models.load_model(pretrained, dtype=dtype, device=device)` (`dtype`, `device`:
  "auto" by default); or, from Python, an already-loaded model (then pass `tokenizer` too).
  lm-eval's own default device is `cuda:0`: where CUDA (or the named GPU, or MPS) is not
  available the model loads on the CPU with a warning, as lm-eval's `--model hf` does.
- `strategy`: a name in `decodesearch.strategies.STRATEGIES` (default `greedy`), and its options by
  name, e.g. `n=4`, `gamma=1.5`, `policy=force`, `seed=0`. A list option takes `|`-separated
  values (`triggers=\\n\\nWait.|\\n\\nHmm.`); `\\n` and `\\t` in string options are unescaped
  (lm-eval splits model_args on commas, so values cannot contain one).
- `temperature`, `top_k`, `top_p`, `min_p`: the strategy's sampler (default: the strategy's own).
  The task's `do_sample`/`temperature`/... generation kwargs are ignored (logged once): the
  strategy decides how to sample, a task's greedy settings would make every sample identical.
- `max_rows`, `max_kv_bytes`: the engine's bounds (one `Engine` per model instance, reused).
- `max_gen_toks`: the new-token budget for requests whose task sets none (default 256).
- HFLM options that still apply to a loaded model (`batch_size`, `max_length`, `add_bos_token`,
  `think_end_token`, ...); loading options (`peft`, `parallelize`, `gguf_file`, ...) are refused.

Per request: the context (already formatted by lm-eval, chat template included when asked) is
encoded as HFLM encodes it for generation (`tok_batch_encode`, left-truncated to `max_length -
max_gen_toks`), searched with `strategy.stream` (requests that share a strategy run concurrently),
the task's `until` strings (plus EOS) stop decoding, the chosen sample's text is cut at the first
stop string that is the model's own (one inside a text the strategy forced in, such as an IDS
trigger "\\n\\nWait, ...", does not count: `cut_at_stop`), and `max_gen_toks` is the strategy's
`max_tokens`. Loglikelihood requests are HFLM's, unchanged. Single process only (the model is passed
to HFLM already loaded, so no accelerate data parallelism).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import sys
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from tqdm import tqdm

from decodesearch.engine import Engine, Sampler, Stop
from decodesearch.integrations.lm_eval_plugin import MODEL_NAME
from decodesearch.options import Option, options_of, parse
from decodesearch.strategies import STRATEGIES, PromptFormat, SearchResult, Strategy

logger = logging.getLogger(__name__)

# Strategy settings (and the `progress` callback) the adapter sets itself, and where the user sets them instead.
RESERVED = {
    "max_tokens": "the task's max_gen_toks (override with --gen_kwargs max_gen_toks=N, or model arg max_gen_toks)",
    "stop": "the task's `until`",
    "prompt_format": "lm-eval (contexts arrive formatted; use --apply_chat_template)",
    "progress": "lm-eval's progress bar",
    "sampler": "the model args temperature, top_k, top_p, min_p",
}
SAMPLER_OPTIONS = ("temperature", "top_k", "top_p", "min_p")
# HFLM options that still mean something when HFLM receives an already-loaded model.
HFLM_OPTIONS = {
    "backend", "revision", "truncation", "logits_cache", "max_length", "softmax_dtype",
    "mixed_precision_dtype", "batch_size", "max_batch_size", "trust_remote_code", "use_fast_tokenizer",
    "add_bos_token", "prefix_token_id", "think_end_token", "enable_thinking", "chat_template_args",
}


# ------------------------------------------------------------------------------ option parsing
# Strategy and sampler options are parsed by `decodesearch.options`, as the CLI parses them.

MAX_ROWS, MAX_GEN_TOKS = Option("max_rows", int, None, False, 64), Option("max_gen_toks", int, None, False, 256)


def usable_device(device: str | None) -> str:
    """`device` if this machine has it; a CUDA or MPS device it lacks falls back to "cpu" with a
    warning (lm-eval passes its default "cuda:0" even on CPU-only machines). None/"" -> "auto"."""
    if device is None or str(device).strip() == "":
        return "auto"
    text = str(device).strip()
    kind = text.split(":")[0].lower()
    import torch

    missing = None
    if kind == "cuda":
        if not torch.cuda.is_available():
            missing = "CUDA is not available"
        elif ":" in text and text.split(":", 1)[1].isdigit() and int(text.split(":", 1)[1]) >= torch.cuda.device_count():
            missing = f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            missing = "MPS is not available"
    if missing is None:
        return text
    logger.warning("decodesearch: device %r requested but %s; falling back to cpu", text, missing)
    return "cpu"


def _parse_bytes(value) -> int | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"model arg max_kv_bytes={value!r}: expected a number of bytes (e.g. 4e9)") from None
    if isinstance(value, bool) or number <= 0 or not number.is_integer():
        raise ValueError(f"model arg max_kv_bytes={value!r}: expected a positive whole number of bytes")
    return int(number)


@dataclasses.dataclass
class _Split:
    strategy: dict[str, Any]
    sampler: dict[str, Any]
    hflm: dict[str, Any]


def split_model_args(strategy: str, kwargs: dict[str, Any]) -> _Split:
    """Sort the remaining model args into strategy options, sampler options and HFLM options,
    converting types. Raises ValueError for an unknown strategy or an unknown/unsettable option."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(sorted(STRATEGIES))}")
    options = options_of(STRATEGIES[strategy])
    sampler_options = options_of(Sampler)
    hflm_all = set(inspect.signature(HFLM.__init__).parameters) - {"self", "kwargs"}
    split = _Split({}, {}, {})
    for name, value in kwargs.items():
        if name in RESERVED:
            raise ValueError(f"model arg {name!r} is not accepted: it is set by {RESERVED[name]}")
        if name in options:
            if not options[name].settable:
                raise ValueError(f"strategy option {name!r} cannot be given in model_args (not a string, "
                                 f"number or list); build DecodeSearchLM from Python for it")
            split.strategy[name] = parse(options[name], value)
        elif name in SAMPLER_OPTIONS:
            split.sampler[name] = parse(sampler_options[name], value)
        elif name in HFLM_OPTIONS:
            split.hflm[name] = value
        elif name in hflm_all:
            raise ValueError(f"model arg {name!r} is not supported by the {MODEL_NAME!r} model: it loads the "
                             f"model itself with decodesearch.models.load_model")
        else:
            settable = sorted(k for k, v in options.items() if v.settable and k not in RESERVED)
            raise ValueError(
                f"unknown model arg {name!r} for strategy {strategy!r}; its options: {', '.join(settable)}; "
                f"sampler: {', '.join(SAMPLER_OPTIONS)}; model/engine: pretrained, tokenizer, dtype, device, "
                f"max_rows, max_kv_bytes, max_gen_toks; "
                f"HFLM: {', '.join(sorted(HFLM_OPTIONS))}"
            )
    return split


# ------------------------------------------------------------------------------ the model


def cut_at_stop(text: str, stops: list[str], forced: tuple[str, ...] = ()) -> str:
    """`text` up to the first occurrence of any of `stops` (lm-eval's rule), where occurrences lying
    within a `forced` text do not count (a stop "\\n\\n" must not cut at an IDS trigger)."""
    masked = text
    for f in sorted((f for f in forced if f), key=len, reverse=True):
        masked = masked.replace(f, "\0" * len(f))
    return text[: min((i for s in stops if s and (i := masked.find(s)) >= 0), default=len(text))]


class DecodeSearchLM(HFLM):
    """HFLM whose generation goes through a decodesearch strategy (see the module docstring).

    Attributes after construction: `engine` (one `Engine`, reused by every request),
    `strategy_name`, `strategy_kwargs` (converted options, sampler included), `strategy_settings`
    (the settings they make, before each request's `max_tokens` and `stop`), `requests_done`,
    `tokens_generated` and `tokens_forwarded` (sums over generate_until requests), and
    `last_result` (the `SearchResult` of the latest request, with its trace).
    """

    def __init__(
        self,
        pretrained,
        strategy: str = "greedy",
        max_rows: int = 64,
        max_kv_bytes: int | None = None,
        max_gen_toks: int = 256,
        tokenizer=None,
        dtype: str = "auto",
        device: str | None = None,
        **kwargs,
    ):
        strategy = str(strategy).strip()
        split = split_model_args(strategy, kwargs)
        max_rows, max_gen_toks = parse(MAX_ROWS, max_rows), parse(MAX_GEN_TOKS, max_gen_toks)
        if max_rows is None or max_rows < 1 or max_gen_toks is None or max_gen_toks < 1:
            raise ValueError(f"max_rows={max_rows!r} and max_gen_toks={max_gen_toks!r} must be ints >= 1")
        max_kv_bytes = _parse_bytes(max_kv_bytes)

        self.strategy_name = strategy
        self.strategy_kwargs = dict(split.strategy)
        self.strategy_kwargs["prompt_format"] = PromptFormat(instruction=None, chat=False)
        probe = self._build_strategy(self.strategy_kwargs)  # validates the options before loading
        self.strategy_settings = probe.settings
        if split.sampler:
            try:
                self.strategy_kwargs["sampler"] = dataclasses.replace(probe.sampler, **split.sampler)
            except ValueError as exc:
                raise ValueError(f"model args {split.sampler}: {exc}") from None
            self.strategy_settings = probe.revise(sampler=self.strategy_kwargs["sampler"])

        if isinstance(pretrained, str):
            from decodesearch.models import load_model

            model, loaded_tok = load_model(pretrained, dtype=dtype or "auto", device=usable_device(device))
            tokenizer = loaded_tok if tokenizer is None else tokenizer
            name = pretrained
        else:
            if tokenizer is None:
                raise ValueError("an already-loaded `pretrained` model needs `tokenizer` too")
            model = pretrained
            name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        super().__init__(pretrained=model, tokenizer=tokenizer, **split.hflm)
        self.pretrained = name  # a string, for lm-eval's results config
        self._max_gen_toks = max_gen_toks
        self.engine = Engine(self.model, self.tokenizer, max_rows=max_rows, max_kv_bytes=max_kv_bytes)
        self._strategies: dict[tuple[int, tuple[str, ...]], Strategy] = {}
        self._ignored_warned: set[str] = set()
        self.requests_done = 0
        self.tokens_generated = 0
        self.tokens_forwarded = 0
        self.last_result: SearchResult | None = None

    def _build_strategy(self, kwargs: dict[str, Any]) -> Strategy:
        try:
            return STRATEGIES[self.strategy_name](**kwargs)
        except (TypeError, ValueError) as exc:  # e.g. n for greedy, which fixes it to 1
            raise ValueError(f"strategy {self.strategy_name!r} rejects its options: {exc}") from None

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    def strategy_for(self, max_gen_toks: int, until: list[str]) -> Strategy:
        """The strategy used for requests with this budget and these stop strings (cached)."""
        strings = tuple(dict.fromkeys(s for s in until if s))
        key = (max_gen_toks, strings)
        if key not in self._strategies:
            self._strategies[key] = self._build_strategy(
                {**self.strategy_kwargs, "max_tokens": max_gen_toks, "stop": Stop(strings=strings)}
            )
        return self._strategies[key]

    def _warn_ignored(self, kwargs: dict[str, Any]) -> None:
        names = sorted(set(kwargs) - self._ignored_warned)
        if names:
            self._ignored_warned.update(names)
            logger.warning("decodesearch: task generation kwargs %s are ignored; the strategy %r decides "
                           "how to sample (set temperature/top_k/top_p/min_p in model_args)",
                           {k: kwargs[k] for k in names}, self.strategy_name)

    def encode_context(self, context: str, max_gen_toks: int) -> list[int]:
        """The context's ids, cut from the left to leave `max_gen_toks` of the model's length."""
        max_ctx = self.max_length - max_gen_toks
        if max_ctx <= 0:
            raise ValueError(f"max_gen_toks={max_gen_toks} leaves no room for the context "
                             f"(max_length={self.max_length})")
        enc, _ = self.tok_batch_encode([context], left_truncate_len=max_ctx, truncation=self.truncation)
        return enc[0].tolist() or [self.prefix_token_id]

    def answer_text(self, result: SearchResult, until: list[str], strategy: Strategy) -> str:
        """The chosen sample's text after any thinking block, cut at the model's first `until` string."""
        self.last_result = result
        self.requests_done += 1
        self.tokens_generated += result.tokens_generated
        self.tokens_forwarded += result.tokens_forwarded
        think = self.think_end_token
        if isinstance(think, int):
            toks = list(result.token_ids)
            cut = max((i for i, t in enumerate(toks) if t == think), default=None)
            text = result.text if cut is None else self.tok_decode(toks[cut + 1 :]).lstrip()
        else:
            text = result.text
            if isinstance(think, str) and think:
                text = text.split(think)[-1].lstrip()
        return cut_at_stop(text, until, strategy.forced_texts())

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """One strategy search per request; requests that share a strategy (the same budget and stop
        strings) run concurrently on the engine. Returns the texts in the requests' order."""
        eot = self.eot_token_id
        eos = None if eot is None else self.tok_decode(eot, skip_special_tokens=False)
        groups: dict[int, list[tuple[int, list[int], list[str]]]] = {}
        strategies: dict[int, Strategy] = {}
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            self._warn_ignored(kwargs)
            strategy = self.strategy_for(max_gen_toks, until)
            strategies[id(strategy)] = strategy
            groups.setdefault(id(strategy), []).append((i, self.encode_context(context, max_gen_toks), until))
        out: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc=f"decodesearch {self.strategy_name}")
        for key, items in groups.items():
            strategy = strategies[key]
            ids = [x for _, x, _ in items]
            for f in strategy.stream(self.engine, ids, [requests[i].args[0] for i, _, _ in items]):
                if f.error is not None:
                    raise f.error
                i, _, until = items[f.index]
                out[i] = self.answer_text(f.result, until, strategy)
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
                bar.update(1)
        bar.close()
        return out

    def get_model_info(self) -> dict:
        """What lm-eval records in results["config"]: model size/dtype, the strategy, the options
        given and its settings (`as_config()`, less `max_tokens` and `stop`, set per request); no hub
        lookups."""
        shown = {k: v for k, v in self.strategy_kwargs.items() if k != "prompt_format"}
        settings = {k: v for k, v in self.strategy_settings.as_config().items() if k not in ("max_tokens", "stop")}
        return {
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(self.model.dtype),
            "decodesearch_strategy": self.strategy_name,
            "decodesearch_options": {k: repr(v) if k == "sampler" else v for k, v in shown.items()},
            "decodesearch_settings": settings,
        }


def register() -> None:
    """Register `DecodeSearchLM` in lm-eval's model registry as `decodesearch` (idempotent)."""
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        register_model(MODEL_NAME)(DecodeSearchLM)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's CLI (`lm-eval [run|ls|validate] ...`) with the `decodesearch` model registered."""
    from lm_eval.__main__ import cli_evaluate

    register()
    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    # Run as a script this file is `__main__`; register the importable module's class, not this copy.
    from decodesearch.integrations.lm_eval import main as _main

    _main()
else:
    register()
