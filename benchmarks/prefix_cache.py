"""Prefix cache: an 8-shot prompt over many problems, with the cache vs without.

The few-shot block is `--shots` worked MATH-500 level-1 problems (problem, solution) as the system
prompt, so every problem's prompt starts with the same >= 800 tokens; the problems are the next
`--problems` level-1 problems. Greedy, `--max-tokens` new tokens (short: this measures prompts), all
problems in flight at once, the same engine settings except `prefix_cache_rows`, runs interleaved
(A B A B ...) `--repeats` times, medians. Reports prompt tokens forwarded, tokens reused, wall time
and whether the generated tokens are the same. Prints a table and writes
benchmarks/results/prefix_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from decodesearch.engine import Engine
from decodesearch.models import load_model
from decodesearch.strategies import Greedy, PromptFormat

from common import RESULTS, add_data_arg, add_model_args, environment, write_report


def level1(data_dir: str) -> list[dict]:
    rows = [json.loads(x) for x in (Path(data_dir) / "math500.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if r.get("level") == 1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, model="smollm2-135m-instruct")
    add_data_arg(p)
    p.add_argument("--shots", type=int, default=8)
    p.add_argument("--problems", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-rows", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "prefix_cache.json"))
    args = p.parse_args(argv)

    rows = level1(args.data_dir)
    shots, problems = rows[: args.shots], rows[args.shots : args.shots + args.problems]
    block = "Solve each problem. Worked examples:\n\n" + "\n\n".join(
        f"Problem: {r['problem']}\nSolution: {r['solution']}" for r in shots)
    model, tok = load_model(args.model, dtype=args.dtype)
    fmt = PromptFormat(system=block)
    ids = [fmt.encode(tok, r["problem"]) for r in problems]
    shared = min(len(os.path.commonprefix([a, b])) for a, b in zip(ids, ids[1:]))
    prompt_tokens = sum(map(len, ids))
    print(f"{args.model} {args.dtype}, {torch.get_num_threads()} threads: {len(ids)} prompts, "
          f"{shared} shared prefix tokens, {prompt_tokens} prompt tokens in all", flush=True)

    runs: dict[str, list[dict]] = {"cache": [], "no cache": []}
    tokens: dict[str, list] = {}
    for _ in range(args.repeats):
        for name, rows_cached in (("cache", 4), ("no cache", 0)):
            engine = Engine(model, tok, max_rows=args.max_rows, prefix_cache_rows=rows_cached)
            t0 = time.perf_counter()
            results = Greedy(max_tokens=args.max_tokens).run_ids(engine, ids, [r["problem"] for r in problems])
            wall = time.perf_counter() - t0
            gen = sum(r.tokens_generated for r in results)
            runs[name].append({"wall_s": wall, "tokens_forwarded": engine.stats.tokens_forwarded,
                               "prompt_tokens_forwarded": engine.stats.tokens_forwarded - gen,
                               "tokens_reused": engine.stats.tokens_reused, "tokens_generated": gen})
            tokens[name] = [r.token_ids for r in results]
            print(f"  {name:<9} {wall:7.1f} s  forwarded {engine.stats.tokens_forwarded:>6}  "
                  f"reused {engine.stats.tokens_reused:>6}", flush=True)

    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    report = {
        **environment(args), "shots": args.shots, "problems": len(ids),
        "shared_prefix_tokens": shared, "prompt_tokens": prompt_tokens, "max_tokens": args.max_tokens,
        "repeats": args.repeats, "runs": runs, "median": med,
        "prompt_tokens_ratio": med["no cache"]["prompt_tokens_forwarded"] / med["cache"]["prompt_tokens_forwarded"],
        "wall_ratio": med["no cache"]["wall_s"] / med["cache"]["wall_s"],
        "same_tokens": tokens["cache"] == tokens["no cache"],
        "sample_output": tok.decode(tokens["cache"][0]),
    }
    print(f"\n{'':<10}{'prompt tokens forwarded':>24}{'wall s':>9}")
    for k in ("no cache", "cache"):
        print(f"{k:<10}{med[k]['prompt_tokens_forwarded']:>24.0f}{med[k]['wall_s']:>9.1f}")
    print(f"{report['prompt_tokens_ratio']:.1f}x fewer prompt tokens, {report['wall_ratio']:.2f}x wall; "
          f"same tokens: {report['same_tokens']}")
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
