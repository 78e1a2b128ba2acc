"""Engine overhead, measured side by side in one run. Not a test.

A. Plain sampling: n samples of `--new` tokens from one prompt through the engine vs
   `model.generate(num_return_sequences=n)`, same model, dtype and sampler; runs alternate.
   Reported: tokens/s of each and their ratio (engine / HF).
B. Branching: `--rounds` rounds of {fork 4, decode 32, rewind 16, extend 8 trigger tokens, keep
   one child} on `Engine` vs `Engine(backend=Reencode())` (each continuation re-encodes its branch from
   scratch, batch 1). Same seeds and sampler; in float32 both produce the same tokens, in bfloat16
   batched and unbatched numerics may part ways (the agreement is reported). Reported: ratios of
   tokens forwarded and of wall time.

Prints a table and writes benchmarks/results/engine_overhead.json.
"""

from __future__ import annotations

import argparse
import time

import torch

from decodesearch.engine import DenseRows, Engine, Reencode, Sampler, Stop
from decodesearch.models import load_model

from common import RESULTS, add_model_args, environment, write_report

PROMPT = (
    "You are a careful mathematician. Solve each problem step by step and put the final answer in \\boxed{}.\n\n"
    "Problem: A farmer has 17 sheep. All but 9 run away. How many sheep are left?\n"
    "Solution: 'All but 9' means 9 remain. \\boxed{9}\n\n"
    "Problem: What is the sum of the interior angles of a hexagon, in degrees?\n"
    "Solution: The sum is (n-2)*180 = 4*180 = 720. \\boxed{720}\n\n"
    "Problem: If 3x + 7 = 22, what is x?\n"
    "Solution: 3x = 15, so x = 5. \\boxed{5}\n\n"
    "Problem: A rectangle has perimeter 30 and length 9. What is its area?\n"
    "Solution: 2(9 + w) = 30 gives w = 6, so the area is 54. \\boxed{54}\n\n"
    "Problem: How many positive divisors does 36 have?\n"
    "Solution: 36 = 2^2 * 3^2, so (2+1)(2+1) = 9 divisors. \\boxed{9}\n\n"
    "Problem: Compute the remainder when 2^10 is divided by 7.\n"
    "Solution:"
)
TRIGGER = " Wait, let me check that again."


def bench_sampling(model, tok, n: int, new: int, reps: int) -> dict:
    ids = tok(PROMPT)["input_ids"]
    sampler = Sampler(temperature=1.0, top_k=50)
    inputs = tok(PROMPT, return_tensors="pt").to(model.device)

    def run_engine():
        engine = Engine(model, tok, max_rows=n + 1)
        kids = engine.fork(engine.prefill(ids), n)
        out = engine.decode(kids, new, sampler, Stop(eos_ids=()))
        assert all(len(o) == new for o in out)

    def run_hf():
        torch.manual_seed(0)
        out = model.generate(**inputs, do_sample=True, temperature=1.0, top_k=50, top_p=1.0,
                             num_return_sequences=n, max_new_tokens=new, min_new_tokens=new,
                             pad_token_id=tok.eos_token_id)
        assert out.shape[1] - inputs["input_ids"].shape[1] == new

    times = {"engine": [], "hf_generate": []}
    run_engine(), run_hf()  # warm-up
    for _ in range(reps):
        for name, fn in (("engine", run_engine), ("hf_generate", run_hf)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    tps = {k: n * new / v for k, v in best.items()}
    return {"n": n, "new_tokens": new, "reps": reps, "seconds": times,
            "tokens_per_s": tps, "ratio_engine_over_hf": tps["engine"] / tps["hf_generate"]}


def branching_workload(engine: Engine, tok, rounds: int) -> list[list[int]]:
    trigger = tok(TRIGGER, add_special_tokens=False)["input_ids"][:8]
    cur = engine.prefill(tok(PROMPT)["input_ids"], seed=0)
    sampler = Sampler(temperature=1.0, top_k=50)
    kept = []
    for _ in range(rounds):
        kids = engine.fork(cur, 4)
        engine.decode(kids, 32, sampler, Stop(eos_ids=()))
        for k in kids:
            engine.rewind(k, 16)
        engine.extend(kids, [trigger] * 4)
        for k in kids[1:]:
            engine.release(k)
        engine.release(cur)
        cur = kids[0]
        kept.append(list(cur.tokens))
    return kept


def bench_branching(model, tok, rounds: int, reps: int) -> dict:
    rows = {}
    for name, backend in (("engine", DenseRows), ("reencode", Reencode)):
        times, stats, tokens = [], None, None
        for _ in range(reps):
            engine = Engine(model, tok, max_rows=16, backend=backend())
            t0 = time.perf_counter()
            tokens = branching_workload(engine, tok, rounds)
            times.append(time.perf_counter() - t0)
            stats = engine.stats.as_dict()
        rows[name] = {"seconds": times, "stats": stats, "tokens": tokens}
    e, r = rows["engine"], rows["reencode"]
    same = sum(x == y for a, b in zip(e["tokens"], r["tokens"]) for x, y in zip(a, b))
    return {
        "rounds": rounds, "reps": reps,
        "token_agreement": same / sum(len(a) for a in e["tokens"]),
        "engine": {"seconds": e["seconds"], "stats": e["stats"]},
        "reencode": {"seconds": r["seconds"], "stats": r["stats"]},
        "ratio_tokens_forwarded": r["stats"]["tokens_forwarded"] / e["stats"]["tokens_forwarded"],
        "ratio_wall": min(r["seconds"]) / min(e["seconds"]),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, model="smollm2-135m-instruct", dtype="bfloat16")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "engine_overhead.json"))
    args = p.parse_args(argv)

    model, tok = load_model(args.model, dtype=args.dtype)
    print(f"model={args.model} dtype={args.dtype} device={model.device} threads={torch.get_num_threads()}")
    a = bench_sampling(model, tok, args.n, args.new, args.reps)
    print(f"A done: engine {a['tokens_per_s']['engine']:.1f} tok/s, HF {a['tokens_per_s']['hf_generate']:.1f} tok/s")
    b = bench_branching(model, tok, args.rounds, args.reps)
    result = {**environment(args), "device": str(model.device), "torch_threads": torch.get_num_threads(),
              "A_plain_sampling": a, "B_branching": b}
    print()
    print(f"{'benchmark':<34}{'engine':>12}{'baseline':>12}{'ratio':>8}")
    print(f"{'A sampling tok/s (8x256)':<34}{a['tokens_per_s']['engine']:>12.1f}"
          f"{a['tokens_per_s']['hf_generate']:>12.1f}{a['ratio_engine_over_hf']:>7.2f}x")
    print(f"{'B tokens forwarded':<34}{b['engine']['stats']['tokens_forwarded']:>12}"
          f"{b['reencode']['stats']['tokens_forwarded']:>12}{b['ratio_tokens_forwarded']:>7.2f}x")
    print(f"{'B wall seconds (best of reps)':<34}{min(b['engine']['seconds']):>12.2f}"
          f"{min(b['reencode']['seconds']):>12.2f}{b['ratio_wall']:>7.2f}x")
    write_report(args.out, result)


if __name__ == "__main__":
    main()
