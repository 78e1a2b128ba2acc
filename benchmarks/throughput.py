"""Throughput on a whole benchmark: many searches on one engine vs HF `generate`.

The first `--problems` MATH-500 problems of `--level` (from ../shared/data/math500.jsonl), one
prompt encoding for every route (the strategies' default chat format), `--max-tokens` new tokens,
measured side by side in one process:

- greedy: the engine at full concurrency (every problem in flight that `--max-rows` admits) vs HF
  `model.generate` in left-padded batches of `--hf-batch` vs the engine at concurrency 1 (on the
  first `--serial-problems` problems; tokens/s compare).
- sampling n=4 (T=0.7, top-p 0.95): the engine at full concurrency vs `model.generate(
  num_return_sequences=4)` over batches of `--hf-sample-batch` problems.
- IDS n=4: full concurrency vs concurrency 1 (first `--serial-problems` problems).

Tokens/s counts generated tokens (EOS excluded, IDS trigger tokens excluded) per wall second.
Accuracy is math-verify on the extracted answers; for greedy the engine's tokens are compared
with HF's (bf16 batching noise can flip a near-tie). `attended/valid` is the engine's
`attended_cells / valid_cells` over the run (the cost of rows of different lengths sharing a call).
Prints a table and writes benchmarks/results/throughput.json. `--smoke` runs everything at toy
sizes on a tiny random model (for tests; it never writes the reference file).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from decodesearch.bench.datasets import Problem, load_jsonl
from decodesearch.engine import Engine, Sampler
from decodesearch.scoring.answers import check_answer, extract_answer
from decodesearch.strategies import IDS, Greedy, PromptFormat, Sampling, Strategy

from common import RESULTS, add_data_arg, add_model_args, environment, write_report

SAMPLER = Sampler(temperature=0.7, top_p=0.95)


def level_problems(data_dir: str, level: int, count: int) -> list[Problem]:
    path = Path(data_dir) / "math500.jsonl"
    levels = {json.loads(x)["id"]: json.loads(x).get("level") for x in path.read_text().splitlines() if x.strip()}
    return [p for p in load_jsonl(path) if levels[p.id] == level][:count]


def engine_run(model, tok, strategy: Strategy, problems, ids, max_rows: int, concurrency: int | None) -> dict:
    engine = Engine(model, tok, max_rows=max_rows)
    t0 = time.perf_counter()
    results = strategy.run_ids(engine, ids, [p.problem for p in problems], concurrency=concurrency)
    wall = time.perf_counter() - t0
    st = engine.stats
    samples = [s for r in results for s in r.samples]
    return {
        "route": f"engine, concurrency {concurrency or 'full'}", "problems": len(problems), "wall_s": wall,
        "tokens_generated": sum(s.tokens_generated for s in samples),
        "tokens_per_s": sum(s.tokens_generated for s in samples) / wall,
        "correct": sum(check_answer(r.answer, p.answer, p.kind) for r, p in zip(results, problems)),
        "pass_any": sum(any(check_answer(s.answer, p.answer, p.kind) for s in r.samples)
                        for r, p in zip(results, problems)),
        "forward_calls": st.forward_calls, "peak_rows": st.peak_rows, "max_rows": max_rows,
        "attended_over_valid": st.attended_cells / max(1, st.valid_cells),
        "answers": [r.answer for r in results],
        "token_ids": [r.token_ids for r in results],
    }


def hf_run(model, tok, problems, ids, max_tokens: int, batch: int, n: int, sampler: Sampler | None) -> dict:
    """`model.generate` over left-padded batches of `batch` problems, `n` sequences each."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
              else [model.generation_config.eos_token_id])
    dev = model.get_input_embeddings().weight.device
    outs: list[list[list[int]]] = []
    t0 = time.perf_counter()
    for i in range(0, len(ids), batch):
        chunk = ids[i : i + batch]
        width = max(map(len, chunk))
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in chunk], device=dev)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk], device=dev)
        kw = dict(do_sample=False) if sampler is None else dict(
            do_sample=True, temperature=sampler.temperature, top_p=sampler.top_p, top_k=0)
        with torch.no_grad():
            seqs = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_tokens,
                                  num_return_sequences=n, pad_token_id=pad, **kw)
        for j in range(len(chunk)):
            rows = []
            for k in range(n):
                new = seqs[j * n + k, width:].tolist()
                cut = next((m for m, t in enumerate(new) if t in eos), len(new))
                rows.append(new[:cut])
            outs.append(rows)
    wall = time.perf_counter() - t0
    answers = [[extract_answer(tok.decode(r, skip_special_tokens=True)) for r in rows] for rows in outs]
    tokens = sum(len(r) for rows in outs for r in rows)
    return {
        "route": f"HF generate, batches of {batch}" + (f" x {n} sequences" if n > 1 else ""),
        "problems": len(problems), "wall_s": wall, "tokens_generated": tokens, "tokens_per_s": tokens / wall,
        "correct": sum(check_answer(a[0], p.answer, p.kind) for a, p in zip(answers, problems)),
        "pass_any": sum(any(check_answer(x, p.answer, p.kind) for x in a) for a, p in zip(answers, problems)),
        "answers": [a[0] for a in answers], "token_ids": [rows[0] for rows in outs],
    }


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    same = sum(x == y for x, y in zip(a, b))
    first = [next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), min(len(x), len(y)))
             for x, y in zip(a, b) if x != y]
    return {"identical": same, "of": len(a), "first_divergence": first}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, model="qwen2.5-coder-0.5b-instruct", dtype="bfloat16", dtypes=("float32", "bfloat16", "float16"),
                   device="cpu")
    add_data_arg(p)
    p.add_argument("--level", type=int, default=1)
    p.add_argument("--problems", type=int, default=32)
    p.add_argument("--serial-problems", type=int, default=8, help="problems for the concurrency-1 runs")
    p.add_argument("--sample-problems", type=int, default=None,
                   help="problems for the sampling and IDS runs (default: --problems)")
    p.add_argument("--max-tokens", type=int, default=384)
    p.add_argument("--max-rows", type=int, default=160, help="engine rows (full concurrency admits what fits)")
    p.add_argument("--hf-batch", type=int, default=16)
    p.add_argument("--hf-sample-batch", type=int, default=8)
    p.add_argument("--runs", default="greedy,sampling,ids")
    p.add_argument("--repeats", type=int, default=1,
                   help="greedy: run engine and HF this many times, interleaved (ABAB...); ratios of medians")
    p.add_argument("--smoke", action="store_true", help="toy sizes on a tiny random model (needs --out)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.smoke and args.out is None:
        p.error("--smoke needs --out (the reference file is never overwritten by a smoke run)")
    out = Path(args.out or RESULTS / "throughput.json")

    if args.smoke:
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

        tok = AutoTokenizer.from_pretrained(args.model)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, args.dtype)).eval()
        problems = [Problem(f"toy-{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(args.problems)]
    else:
        from decodesearch.models import load_model

        model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
        problems = level_problems(args.data_dir, args.level, args.problems)
    fmt = PromptFormat()
    ids = [fmt.encode(tok, q.problem) for q in problems]
    k = min(args.serial_problems, len(problems))
    m = min(args.sample_problems or len(problems), len(problems))
    runs = set(args.runs.split(","))
    report = {**environment(args), "level": args.level,
              "max_tokens": args.max_tokens, "max_rows": args.max_rows, "smoke": args.smoke,
              "problem_ids": [q.id for q in problems], "runs": {}}

    def record(name, row):
        print(f"  {row['route']:<42} {row['problems']:>3} problems {row['tokens_generated']:>7} tokens "
              f"{row['wall_s']:>8.1f} s {row['tokens_per_s']:>7.1f} tok/s  correct {row['correct']}", flush=True)
        report["runs"].setdefault(name, []).append(row)

    mt = args.max_tokens
    if "greedy" in runs:
        print("greedy", flush=True)
        fulls, hfs = [], []
        for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
            fulls.append(engine_run(model, tok, Greedy(max_tokens=mt), problems, ids, args.max_rows, None))
            record("greedy", fulls[-1])
            hfs.append(hf_run(model, tok, problems, ids, mt, args.hf_batch, 1, None))
            record("greedy", hfs[-1])
        full = sorted(fulls, key=lambda r: r["tokens_per_s"])[len(fulls) // 2]
        hf = sorted(hfs, key=lambda r: r["tokens_per_s"])[len(hfs) // 2]
        serial = engine_run(model, tok, Greedy(max_tokens=mt), problems[:k], ids[:k], args.max_rows, 1)
        record("greedy", serial)
        report["greedy_ratios_per_repeat"] = [f["tokens_per_s"] / h["tokens_per_s"] for f, h in zip(fulls, hfs)]
        report["greedy"] = {"repeats": args.repeats, "ratio_to_hf": full["tokens_per_s"] / hf["tokens_per_s"],
                            "ratio_to_concurrency_1": full["tokens_per_s"] / serial["tokens_per_s"],
                            "agreement_with_hf": agreement(full["token_ids"], hf["token_ids"]),
                            "agreement_with_concurrency_1": agreement(full["token_ids"][:k], serial["token_ids"])}
    if "sampling" in runs:
        print("sampling n=4", flush=True)
        full = engine_run(model, tok, Sampling(n=4, max_tokens=mt, sampler=SAMPLER, seed=0), problems[:m], ids[:m],
                          args.max_rows, None)
        record("sampling", full)
        hf = hf_run(model, tok, problems[:m], ids[:m], mt, args.hf_sample_batch, 4, SAMPLER)
        record("sampling", hf)
        report["sampling"] = {"ratio_to_hf": full["tokens_per_s"] / hf["tokens_per_s"]}
    if "ids" in runs:
        print("IDS n=4", flush=True)
        b0 = max(1, mt // 4)
        make = lambda: IDS(n=4, b0=b0, gamma=2.0, max_tokens=mt, sampler=SAMPLER, seed=0)  # noqa: E731
        full = engine_run(model, tok, make(), problems[:m], ids[:m], args.max_rows, None)
        record("ids", full)
        serial = engine_run(model, tok, make(), problems[:k], ids[:k], args.max_rows, 1)
        record("ids", serial)
        report["ids"] = {"b0": b0, "ratio_to_concurrency_1": full["tokens_per_s"] / serial["tokens_per_s"],
                         "agreement_with_concurrency_1": agreement(full["token_ids"][:k], serial["token_ids"])}

    print(f"\n{'':<10}{'ratio':>12}  against")
    for name, key, what in (("greedy", "ratio_to_hf", "HF generate, batches of 16"),
                            ("greedy", "ratio_to_concurrency_1", "engine at concurrency 1"),
                            ("sampling", "ratio_to_hf", "HF generate num_return_sequences=4"),
                            ("ids", "ratio_to_concurrency_1", "engine at concurrency 1")):
        if name in report:
            print(f"{name:<10}{report[name][key]:>11.2f}x  {what}")
    if "greedy" in report:
        a = report["greedy"]["agreement_with_hf"]
        c = report["greedy"]["agreement_with_concurrency_1"]
        print(f"greedy tokens identical to HF on {a['identical']}/{a['of']} problems, "
              f"to the engine at concurrency 1 on {c['identical']}/{c['of']}")
    for rows in report["runs"].values():
        for row in rows:
            row.pop("token_ids", None)
    write_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
