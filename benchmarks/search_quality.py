"""Does search help? Accuracy at equal generated tokens on MATH-500 (issue 12, item 6).

    python benchmarks/search_quality.py [--model qwen2.5-coder-0.5b-instruct] [--levels 1] [--budget 256]

On every MATH-500 problem of `--levels` (from ../shared/data/math500.jsonl), one model, the
strategies' default chat prompt, sampling at T=0.7 / top-p 0.95 where a strategy samples:

- greedy: one sample of at most `--budget` tokens (the 1-sample reference point).
- sampling with `--samples` (8) samples of at most `--budget` tokens each. Its first k samples give
  self-consistency with k samples (majority vote, maj@k) and pass@k (an oracle no strategy can
  pick), each with the tokens of those k samples (`first_k_samples`): a curve of accuracy over
  tokens from one run.
- IDS with `--n` (4) samples, budget schedule (triggers after b0 = budget/4 and 2·b0 sampled tokens,
  gamma 2), each at most `--budget` sampled tokens, triggers aligned to line ends (at most 16
  extra tokens). Trigger tokens are teacher-forced and not counted as generated.
- budget forcing (s1): one greedy sample made to think for exactly IDS's mean tokens per problem
  less 8 (min_thinking_tokens = max_thinking_tokens; "Wait" forced at each early end), then the
  answer cue and at most 16 answer tokens.

`--suite step` (issue 16) runs instead, beside the same sampling run (its file is shared, so it is
not run twice): best-of-N by mean log-prob with `--n` samples, and step-level beam search and DVTS
(`--n` beams, beam width 2, steps split at "\n\n", at most `--budget` tokens per beam) each with the
log-prob and the self-judge step scorer (the model judges its own last step).

Equal tokens: each strategy is compared with self-consistency at the k whose mean generated tokens
per problem is nearest its own (the ratio is reported; the issue asks for within 10%), and budget
forcing is matched to IDS by construction. Accuracy differences are paired over problems with
95% bootstrap CIs (`compare`). IDS's self-correction metrics (CL, CS, RSS; arXiv 2412.19513) are
reported per trigger index. The strategies of a suite run together on one engine (`run_benches`),
budget forcing after them (its budget depends on IDS's tokens). Results files (one JSONL per
strategy, resumable: a rerun continues) go to `--out-dir`; the summary is printed, written as
JSON to `--out`, and drawn as accuracy over tokens to `--png`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from decodesearch.bench.datasets import load_jsonl
from decodesearch.bench.report import compare, first_k_samples, plot, summarize
from decodesearch.bench.results import read_results
from decodesearch.bench.runner import BenchRun, run_benches
from decodesearch.engine import Engine, Sampler
from decodesearch.models import load_model
from decodesearch.strategies import DVTS, IDS, BeamSearch, BestOfN, BudgetForcing, Greedy, Sampling

from common import RESULTS, add_data_arg, add_model_args, environment, write_report

SAMPLER = Sampler(temperature=0.7, top_p=0.95)


def problems_of_levels(data_dir: str, levels: set[int]):
    path = Path(data_dir) / "math500.jsonl"
    level = {json.loads(x)["id"]: json.loads(x).get("level") for x in path.read_text().splitlines() if x.strip()}
    return [p for p in load_jsonl(path) if level[p.id] in levels]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, model="qwen2.5-coder-0.5b-instruct", dtypes=("float32", "bfloat16", "float16"), device="cpu",
                   model_help="registry name, hub id or folder")
    add_data_arg(p)
    p.add_argument("--suite", default="ids", choices=["ids", "step"],
                   help="ids: greedy, IDS, budget forcing (issue 12); step: best-of-N, beam search, DVTS (issue 16)")
    p.add_argument("--levels", default="1", help="comma-separated MATH-500 levels (default 1: its 43 problems)")
    p.add_argument("--limit", type=int, default=None,
                   help="search only the first N problems of those levels (the sampling run, shared by both "
                        "suites, covers them all; self-consistency is compared on the same N)")
    p.add_argument("--budget", type=int, default=256, help="most sampled tokens of one sample (default 256)")
    p.add_argument("--n", type=int, default=4, help="IDS samples per problem (default 4)")
    p.add_argument("--samples", type=int, default=8, help="sampling run's samples per problem (default 8)")
    p.add_argument("--max-rows", type=int, default=192, help="engine rows (default 192)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: summarise the results files as they are (an interrupted run's finished "
                        "problems; each comparison pairs the problems both runs have)")
    p.add_argument("--note", default="", help="free text recorded in the JSON (e.g. machine load)")
    p.add_argument("--out-dir", type=Path, default=RESULTS / "search_quality")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results/search_quality[_step].json")
    p.add_argument("--png", type=Path, default=None, help="default: --out with .png")
    args = p.parse_args(argv)
    args.out = args.out or RESULTS / ("search_quality.json" if args.suite == "ids" else "search_quality_step.json")
    args.png = args.png or args.out.with_suffix(".png")
    for name in ("budget", "n", "samples", "max_rows"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)} is out of range; accepted: an int >= 1")
    levels = {int(x) for x in args.levels.split(",")}
    all_problems = problems_of_levels(args.data_dir, levels)
    problems = all_problems[: args.limit]
    engine = None
    if not args.report_only:
        model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
        engine = Engine(model, tok, max_rows=args.max_rows)

    def bench(runs, problems) -> None:
        if not args.report_only:
            run_benches(engine, runs, problems)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    b, base = args.budget, {"model": args.model, "dtype": args.dtype, "dataset": "math500",
                            "levels": sorted(levels), "problems": [q.id for q in problems]}
    base_all = {**base, "problems": [q.id for q in all_problems]}
    ids_options = {"n": args.n, "b0": max(1, b // 4), "gamma": 2.0, "schedule": "budget", "align": "line",
                   "align_max_tokens": 16, "max_tokens": b, "seed": args.seed}
    sampling = {"temperature": 0.7, "top_p": 0.95}
    strategies = {"sampling": (Sampling(n=args.samples, max_tokens=b, sampler=SAMPLER, seed=args.seed),
                               {"n": args.samples, "max_tokens": b, "seed": args.seed, **sampling})}
    if args.suite == "ids":
        strategies["greedy"] = (Greedy(max_tokens=b), {"max_tokens": b})
        strategies["ids"] = (IDS(sampler=SAMPLER, **ids_options), {**ids_options, **sampling})
    else:
        bon = {"n": args.n, "max_tokens": b, "seed": args.seed}
        strategies["best_of_n"] = (BestOfN(sampler=SAMPLER, **bon), {**bon, **sampling})
        for cls in (BeamSearch, DVTS):
            for scorer in ("logprob", "self_judge"):
                opts = {"n": args.n, "beam_width": 2, "scorer": scorer, "max_tokens": b, "seed": args.seed}
                strategies[f"{cls.name}_{scorer}"] = (cls(**opts), opts)  # their default sampler: T=0.8
    path = {name: args.out_dir / f"{name}.jsonl" for name in (*strategies, "budget_forcing")}
    print(f"{len(problems)} problems (levels {sorted(levels)}), {args.model} {args.dtype}, "
          f"{torch.get_num_threads()} threads", flush=True)
    t0 = time.perf_counter()
    runs = [BenchRun(s, str(path[name]), {**(base_all if name == "sampling" else base), "strategy": name,
                                          "options": opts}) for name, (s, opts) in strategies.items()]
    if args.suite == "ids" and len(problems) == len(all_problems):
        bench(runs, problems)  # all together on one engine
    else:  # the searches first: the shared sampling run may still be open in the other suite's process
        bench(runs[1:], problems)
        done = {r["id"] for r in read_results(path["sampling"])[1]} if path["sampling"].exists() else set()
        if not done >= {q.id for q in all_problems}:
            bench(runs[:1], all_problems)
    wall = {"together": None if args.report_only else time.perf_counter() - t0}
    bf_options = None
    if args.suite == "ids":
        ids_tokens = summarize(path["ids"])["mean_tokens_generated"]
        think = max(1, round(ids_tokens) - 8)  # about 8 answer tokens follow the cue "\\boxed{"
        bf_options = {"min_thinking_tokens": think, "max_thinking_tokens": think, "num_ignore": 0,
                      "max_answer_tokens": 16}
        t0 = time.perf_counter()
        bench([BenchRun(BudgetForcing(**bf_options), str(path["budget_forcing"]),
                        {**base, "strategy": "budget_forcing", "options": bf_options})], problems)
        wall["budget_forcing"] = None if args.report_only else time.perf_counter() - t0

    # Self-consistency and pass@k with the first k samples of the sampling run.
    searched_ids = {q.id for q in problems}
    sampled = [r for r in read_results(path["sampling"])[1] if r["id"] in searched_ids]
    fewest = min((len(r["samples"]) for r in sampled), default=args.samples)
    if fewest < args.samples:
        raise SystemExit(f"--samples={args.samples} is more than the sampling run holds ({fewest} samples per "
                         f"problem in {path['sampling']}); accepted: --samples 1..{fewest}")
    sc = {k: first_k_samples(sampled, k) for k in range(1, args.samples + 1)}
    oracle = {k: first_k_samples(sampled, k, rule="oracle") for k in range(1, args.samples + 1)}

    def tokens(run: list[dict], ids=None) -> float:  # mean tokens per problem, over `ids` only when given
        return summarize([r for r in run if ids is None or r["id"] in ids])["mean_tokens_generated"]

    def nearest_k(run: list[dict]) -> int:  # the self-consistency k at the nearest mean tokens, same problems
        ids = {r["id"] for r in run}
        return min(sc, key=lambda k: abs(tokens(sc[k], ids) - tokens(run)))

    searched = ["ids", "budget_forcing"] if args.suite == "ids" else [n for n in strategies if n != "sampling"]
    loaded = {n: read_results(path[n])[1] if path[n].exists() else [] for n in ["greedy"] * (args.suite == "ids")
              + searched}
    empty = [n for n in searched if not loaded[n]]
    if empty:
        print(f"no finished problems yet, left out: {', '.join(empty)}")
    searched = [n for n in searched if n not in empty]
    runs = {**({"greedy": loaded["greedy"]} if args.suite == "ids" else {}),
            **{f"self-consistency k={k}": sc[k] for k in sc}, **{n: loaded[n] for n in searched}}
    rows = []
    for label, run in runs.items():
        s = summarize(run)
        forced = sum(x.get("tokens_forced") or 0 for r in run for x in r.get("samples") or []) / max(1, len(run))
        rows.append({"run": label, "accuracy": s["accuracy"], "n_correct": s["n_correct"], "problems": s["n"],
                     "mean_tokens_generated": s["mean_tokens_generated"], "mean_tokens_forced": forced,
                     "pass_at_k_oracle": (summarize(oracle[int(label.split("=")[1])])["accuracy"]
                                          if label.startswith("self-consistency") else None)})
    pairs = [(f"self-consistency k={nearest_k(runs[n])}", n) for n in searched]
    if args.suite == "ids":
        pairs += [("greedy", "ids"), ("budget_forcing", "ids"), ("greedy", "budget_forcing")]
    diffs = []
    for a, b_ in pairs:
        c = compare(runs[a], runs[b_], n_boot=10_000, seed=0)
        common = {r["id"] for r in runs[a]} & {r["id"] for r in runs[b_]}
        diffs.append({"a": a, "b": b_, "diff": c["diff"], "ci95": c["ci"], "n": c["n_common"],
                      "tokens_b_over_a": tokens(runs[b_], common) / tokens(runs[a], common)})
    ids_summary = summarize(path["ids"]) if args.suite == "ids" else None
    report = {
        **environment(args), "note": args.note, "suite": args.suite, "levels": sorted(levels),
        "problems": len(problems), "budget_per_sample": b, "sampler": sampling,
        "options": {name: opts for name, (_, opts) in strategies.items()},
        "budget_forcing_options": bf_options, "wall_s": wall, "rows": rows, "paired_differences": diffs,
        "ids_self_correction": ids_summary and ids_summary["self_correction"],
        "ids_self_correction_by_trigger": ids_summary and ids_summary["self_correction_by_trigger"],
    }
    print(f"\n{'run':<24}{'accuracy':>16}{'pass@k (oracle)':>17}{'tokens/problem':>16}{'forced/problem':>16}")
    for r in rows:
        acc = f"{100 * r['accuracy']:.1f}% ({r['n_correct']}/{r['problems']})"
        pk = "" if r["pass_at_k_oracle"] is None else f"{100 * r['pass_at_k_oracle']:.1f}%"
        print(f"{r['run']:<24}{acc:>16}{pk:>17}{r['mean_tokens_generated']:>16.1f}{r['mean_tokens_forced']:>16.1f}")
    print("\npaired accuracy differences (b - a), 95% bootstrap CI over problems, and b's tokens over a's:")
    for d in diffs:
        print(f"  {d['b']} - {d['a']}: {100 * d['diff']:+.1f} pts [{100 * d['ci95'][0]:+.1f}, "
              f"{100 * d['ci95'][1]:+.1f}]  tokens {d['tokens_b_over_a']:.2f}x")
    if args.suite == "ids":
        print("IDS self-correction per trigger index (acc before -> after, CL, CS, RSS, pairs):")
    for t, m in enumerate(report["ids_self_correction_by_trigger"] or []):
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"  trigger {t}: {fmt(m['acc1'])} -> {fmt(m['acc2'])}  CL {fmt(m['cl'])}  CS {fmt(m['cs'])}  "
              f"RSS {fmt(m['rss'])}  ({m['n_pairs']} pairs)")
    plot([*runs.values(), *oracle.values()], args.png,
         labels=[*(f"k={n.split('=')[1]}" if n.startswith("self-consistency") else n for n in runs),
                 *[f"k={k}" for k in oracle]],
         title=f"{args.model} {args.dtype}, MATH-500 level {','.join(map(str, sorted(levels)))} ({len(problems)})")
    write_report(args.out, report, quiet=True)
    print(f"wrote {args.out} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
