"""IDS: tokens forwarded by the engine vs a re-encode-from-scratch run of the same schedule.

The same `IDS` strategy runs on one MATH-500 problem on `Engine` (one prefill, forked samples,
triggers teacher-forced with `extend`) and on `Engine(backend=Reencode(miss_on_extend=True))` (each sample
alone, batch 1; each segment starts from scratch on the whole text, as a loop calling
`model.generate` per segment does). Same seeds and sampler.
Prints a table and writes benchmarks/results/ids_forwarding.json.
"""

from __future__ import annotations

import argparse

from decodesearch.bench.datasets import load_problems
from decodesearch.engine import DenseRows, Engine, Reencode
from decodesearch.models import load_model
from decodesearch.strategies import IDS

from common import RESULTS, add_data_arg, add_model_args, engine_vs_reencode, environment, write_report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, model="smollm2-135m-instruct")
    add_data_arg(p)
    p.add_argument("--problem", type=int, default=0, help="index into math500.jsonl")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--b0", type=int, default=64)
    p.add_argument("--gamma", type=float, default=2.0)
    p.add_argument("--max-tokens", type=int, default=384)
    p.add_argument("--out", default=str(RESULTS / "ids_forwarding.json"))
    args = p.parse_args(argv)

    problem = load_problems("math500", data_dir=args.data_dir)[args.problem]
    model, tok = load_model(args.model, dtype=args.dtype)
    rows = {}
    for name, backend in (("engine", DenseRows), ("reencode", lambda: Reencode(miss_on_extend=True))):
        ids = IDS(n=args.n, b0=args.b0, gamma=args.gamma, max_tokens=args.max_tokens, seed=0)
        engine = Engine(model, tok, max_rows=args.n + 1, backend=backend())
        res = ids.run(engine, [problem.problem])[0]
        triggers = sum(e.event == "trigger" for e in res.trace)
        rows[name] = {"tokens_forwarded": engine.stats.tokens_forwarded, "tokens_generated": res.tokens_generated,
                      "triggers": triggers, "forward_calls": engine.stats.forward_calls, "wall_s": res.wall_s,
                      "answers": [s.answer for s in res.samples]}
        print(f"{name}: {rows[name]['tokens_forwarded']} tokens forwarded, {res.wall_s:.1f} s", flush=True)
    e, r = rows["engine"], rows["reencode"]
    result = {**environment(args), "problem_id": problem.id, "n": args.n, "b0": args.b0, "gamma": args.gamma,
              "max_tokens": args.max_tokens, **rows, **engine_vs_reencode(e, r)}
    write_report(args.out, result)


if __name__ == "__main__":
    main()
