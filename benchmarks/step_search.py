"""Step-level beam search: the engine (kept beams forked at the step boundary) vs re-encoding.

The same `BeamSearch` (log-prob step scorer, so no judge forwards blur the comparison) runs on one
MATH-500 problem on `Engine` and on `Engine(backend=Reencode())` (batch 1, every fork a cache miss that
re-encodes the beam's whole text: what re-submitting each beam's text per step costs on an engine
without a prefix cache, and a bound on what a block-level prefix cache can save). Same seeds, same
sampler, so the same tokens. Prints a table and writes benchmarks/results/step_search.json.
"""

from __future__ import annotations

import argparse

from decodesearch.bench.datasets import load_problems
from decodesearch.engine import DenseRows, Engine, Reencode
from decodesearch.models import load_model
from decodesearch.strategies import BeamSearch

from common import RESULTS, add_data_arg, add_model_args, engine_vs_reencode, environment, write_report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, model="smollm2-135m-instruct")
    add_data_arg(p)
    p.add_argument("--problem", type=int, default=0, help="index into math500.jsonl")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--beam-width", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--out", default=str(RESULTS / "step_search.json"))
    args = p.parse_args(argv)

    problem = load_problems("math500", data_dir=args.data_dir)[args.problem]
    model, tok = load_model(args.model, dtype=args.dtype)
    rows = {}
    for name, backend in (("engine", DenseRows), ("reencode", Reencode)):
        strat = BeamSearch(n=args.n, beam_width=args.beam_width, scorer="logprob", max_steps=args.max_steps,
                           max_tokens=args.max_tokens, seed=0)
        engine = Engine(model, tok, max_rows=args.n + 2, backend=backend())
        res = strat.run(engine, [problem.problem])[0]
        steps = [e for e in res.trace if e.event == "step"]
        rows[name] = {"tokens_forwarded": engine.stats.tokens_forwarded, "tokens_generated": res.tokens_generated,
                      "steps": len(steps), "forward_calls": engine.stats.forward_calls, "wall_s": res.wall_s,
                      "answer": res.answer, "token_ids": res.token_ids}
        print(f"{name}: {engine.stats.tokens_forwarded} tokens forwarded, {len(steps)} steps, {res.wall_s:.1f} s", flush=True)
    e, r = rows["engine"], rows["reencode"]
    result = {**environment(args), "problem_id": problem.id, "n": args.n, "beam_width": args.beam_width,
              "max_steps": args.max_steps, "max_tokens": args.max_tokens, "scorer": "logprob",
              "same_tokens": e.pop("token_ids") == r.pop("token_ids"), **rows, **engine_vs_reencode(e, r)}
    print(f"same chosen tokens on both engines: {result['same_tokens']}")
    write_report(args.out, result)


if __name__ == "__main__":
    main()
