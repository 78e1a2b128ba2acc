"""Python side of benchmarks/gpu_check.sh (issue 17); run it through that script.

    python benchmarks/gpu_check.py engine --model NAME --device cuda --dtype bfloat16 --out engine.json
    python benchmarks/gpu_check.py model-path NAME [--out model.json]  # convert a registry model once, print its folder
    python benchmarks/gpu_check.py synth-data DIR --level 2 --count 64
    python benchmarks/gpu_check.py summary DIR [--smoke]  # the table over DIR/stages.tsv and the JSON files

``engine`` checks the engine on one device and dtype:
  * greedy = HF: the prompts decoded greedily through the engine (all in one batch) against
    ``model.generate(do_sample=False)`` one prompt at a time. Identical tokens are expected; in
    bf16/fp16 two attention paths may round differently, so a prompt whose tokens diverge passes
    only if, at the first divergence, the two tokens' logits (a fresh full forward over HF's
    prefix) are within ``near_tie`` of each other; every gap is recorded.
  * parity: a seeded random sequence of prefill / fork / extend / decode / rewind / release (the
    hypothesis state machine of tests/test_engine_invariants.py, on a short fixed budget) with, after
    every operation, each live branch's next-token logits against a fresh forward over its tokens
    (max error <= tol x max |logit|), and tokens forwarded == tokens introduced (zero recompute).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from common import add_model_args, environment, write_report

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "Question: What is 17 * 23? Answer:",
    "import numpy as np\n\ndef moving_average(x, k):",
    "The three laws of thermodynamics are",
    "SELECT name, COUNT(*) FROM orders",
    "In 1969, the first humans",
]
NEAR_TIE = {"float32": 1e-2, "bfloat16": 0.5, "float16": 0.25}  # logit units
PARITY_TOL = {"float32": 1e-3, "bfloat16": 3e-2, "float16": 1e-2}  # relative to max |logit|


# ------------------------------------------------------------------------------------------------
# engine checks
# ------------------------------------------------------------------------------------------------


def _fresh_logits(model, tokens, device):
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens], device=device)).logits[0, -1].float()


def greedy_vs_generate(model, tok, engine_cls, prompts, max_new: int, dtype: str, device) -> dict:
    import torch

    engine = engine_cls(model, tok, max_rows=max(8, len(prompts)))
    ids = [tok(p)["input_ids"] for p in prompts]
    roots = engine.prefill_batch(ids)
    got = engine.decode(roots, max_new)
    eos = set(engine.eos_ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos))
    rows = []
    for p, x, out, root in zip(prompts, ids, got, roots):
        inputs = torch.tensor([x], device=device)
        with torch.no_grad():
            ref = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                 max_new_tokens=max_new, pad_token_id=pad)
        want = ref[0, len(x):].tolist()
        cut = next((i for i, t in enumerate(want) if t in eos), None)
        want_eos = cut is not None
        want = want if cut is None else want[:cut]  # EOS excluded, as the engine reports it
        got_seq = list(out)
        got_eos = getattr(out, "stop_reason", root.stop_reason) == "eos"
        row = {"prompt": p, "engine_tokens": len(got_seq), "hf_tokens": len(want), "engine_eos": got_eos,
               "hf_eos": want_eos, "identical": got_seq == want and got_eos == want_eos}
        if not row["identical"]:
            k = next((i for i, (a, b) in enumerate(zip(got_seq, want)) if a != b), min(len(got_seq), len(want)))
            row["first_divergence"] = k
            logits = _fresh_logits(model, x + want[:k], device)
            eos_logit = max(float(logits[e]) for e in eos) if eos else float("-inf")

            def logit_at(seq, ended):  # the pick at k: a token, or EOS when the sequence ended there
                return float(logits[seq[k]]) if k < len(seq) else (eos_logit if ended else float("nan"))

            gap = logit_at(want, want_eos) - logit_at(got_seq, got_eos)
            row["logit_gap"] = gap
            row["near_tie"] = abs(gap) <= NEAR_TIE[dtype]  # NaN (cannot happen with equal budgets) fails
        rows.append(row)
    identical = sum(r["identical"] for r in rows)
    ok = all(r["identical"] or r.get("near_tie") for r in rows)
    return {"prompts": len(rows), "max_new_tokens": max_new, "identical": identical, "near_tie_tol": NEAR_TIE[dtype],
            "passed": ok, "rows": rows}


def random_parity(model, tok, engine_mod, ops: int, dtype: str, device, seed: int = 0) -> dict:
    """A seeded random walk over the engine's operations with parity checked after each one."""
    Engine, Sampler, CapacityError = engine_mod.Engine, engine_mod.Sampler, engine_mod.CapacityError
    rng = random.Random(seed)
    vocab = min(int(model.config.vocab_size), len(tok))
    lo, hi = min(100, vocab - 1), min(vocab - 1, 20000)
    engine = Engine(model, tok, max_rows=8, initial_cols=16)  # small: capacity doubles along the way
    eos = set(engine.eos_ids)

    def rand_ids(n):
        out = []
        while len(out) < n:
            t = rng.randint(lo, hi)
            if t not in eos:
                out.append(t)
        return out

    live, introduced, counts, worst = [], 0, {}, 0.0
    tol = PARITY_TOL[dtype]
    for step in range(ops):
        names = ["prefill"] + (["fork", "extend", "decode", "decode", "rewind", "release"] if live else [])
        op = rng.choice(names)
        try:
            if op == "prefill":
                ids = rand_ids(rng.randint(1, 12))
                live.append(engine.prefill(ids))
                introduced += len(ids)
            elif op == "fork":
                b = rng.choice(live)
                kids = engine.fork(b, rng.randint(1, 3))
                assert all(k.tokens == b.tokens for k in kids)
                live.extend(kids)
            elif op == "extend":
                bs = rng.sample(live, rng.randint(1, min(3, len(live))))
                ids = [rand_ids(rng.randint(1, 8)) for _ in bs]
                engine.extend(bs, ids)
                introduced += sum(map(len, ids))
            elif op == "decode":
                bs = rng.sample(live, rng.randint(1, min(4, len(live))))
                sampler = Sampler(temperature=0.0) if rng.random() < 0.5 else Sampler(temperature=1.0, top_k=20)
                out = engine.decode(bs, rng.randint(1, 6), sampler)
                introduced += sum(len(x) for x in out)
            elif op == "rewind":
                b = rng.choice(live)
                n = rng.randint(0, b.length - b.prompt_len)
                before = list(b.tokens)
                engine.rewind(b, n)
                assert b.tokens == before[: len(before) - n]
            else:
                b = rng.choice(live)
                engine.release(b)
                live.remove(b)
        except CapacityError:
            op += " (capacity)"
        counts[op] = counts.get(op, 0) + 1
        assert engine.stats.tokens_forwarded == introduced, (step, op, engine.stats.tokens_forwarded, introduced)
        if live:
            got = engine.logits(live)
            for b, row in zip(live, got):
                want = _fresh_logits(model, b.tokens, device)
                err = float((row.float() - want).abs().max()) / max(float(want.abs().max()), 1e-6)
                worst = max(worst, err)
                assert err <= tol, f"step {step} ({op}): parity error {err:.2e} x max|logit| > {tol}"
    return {"ops": ops, "op_counts": counts, "max_rel_error": worst, "tol": tol, "passed": True,
            "tokens_forwarded": engine.stats.tokens_forwarded}


def cmd_engine(args) -> int:
    import torch

    import decodesearch.engine as engine_mod
    from decodesearch.models import load_model

    t0 = time.time()
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    device = model.get_input_embeddings().weight.device
    report = {**environment(args), "device": str(device), "load_s": time.time() - t0}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    from decodesearch.kernels import backend_for

    report["kernel_backend"] = backend_for(device)
    failed = []
    t = time.time()
    try:
        report["greedy"] = greedy_vs_generate(model, tok, engine_mod.Engine, PROMPTS[: args.prompts], args.max_new,
                                              args.dtype, device)
        if not report["greedy"]["passed"]:
            failed.append("greedy")
    except Exception as e:  # recorded; the parity check still runs
        report["greedy"] = {"passed": False, "error": f"{type(e).__name__}: {e}"}
        failed.append("greedy")
    report["greedy"]["seconds"] = time.time() - t
    t = time.time()
    try:
        report["parity"] = random_parity(model, tok, engine_mod, args.ops, args.dtype, device)
    except Exception as e:
        report["parity"] = {"passed": False, "error": f"{type(e).__name__}: {e}"}
        failed.append("parity")
    report["parity"]["seconds"] = time.time() - t
    report["passed"] = not failed
    g, p = report["greedy"], report["parity"]
    print(f"greedy = HF generate: {g.get('identical', '?')}/{g.get('prompts', '?')} identical, "
          f"passed={g['passed']} {g.get('error', '')}")
    print(f"parity: {p.get('ops', '?')} random ops, max error {p.get('max_rel_error', float('nan')):.2e} x max|logit|, "
          f"passed={p['passed']} {p.get('error', '')}")
    write_report(args.out, report, quiet=True)
    return 0 if not failed else 1


# ------------------------------------------------------------------------------------------------
# small helpers for the shell script
# ------------------------------------------------------------------------------------------------


def cmd_model_path(args) -> int:
    """Convert a registry model once (GGUF -> HF folder in the cache) so later stages only load it."""
    from decodesearch.models import cached_path, load_model

    t0 = time.time()
    load_model(args.name, dtype="float32", device="cpu")  # converts once if needed
    info = {"model": args.name, "path": str(cached_path(args.name)), "seconds": time.time() - t0}
    if args.out:
        write_report(args.out, info, quiet=True)
    print(info["path"])
    return 0


def cmd_synth_data(args) -> int:
    """A math500.jsonl of simple arithmetic word problems at one level (when the real file is absent:
    throughput does not depend on which problems are asked; accuracy then means little)."""
    rng = random.Random(0)
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "math500.jsonl", "w") as f:
        for i in range(args.count):
            a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
            q = f"A shop sells {a} apples in the morning and {b} in the afternoon, in boxes of {c}. " \
                f"How many apples does it sell in total? Give the number."
            f.write(json.dumps({"id": f"synthetic-{i:03d}", "problem": q, "answer": str(a + b),
                                "level": args.level}) + "\n")
    print(out / "math500.jsonl")
    return 0


# ------------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------------


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _junit(path: Path) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    names = {}
    for case in root.iter("testcase"):
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                state = "failed"
            elif child.tag == "skipped":
                state = "skipped"
        names[case.get("name")] = state
    tot["passed"] = tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"]
    real = names.get("test_kernels_do_not_sync_the_stream") == "passed"
    tot["mode"] = "cuda, compiled triton" if real else "cpu, triton interpreter"
    tot["failed_tests"] = sorted(n for n, s in names.items() if s == "failed")
    return tot


def _fmt_time(s) -> str:
    return f"{int(s)}s" if s is not None else "-"


def stage_details(name: str, d: Path, smoke: bool) -> tuple[bool, str, dict | None]:
    """(result acceptable?, one-line result, JSON written for the stage) from the stage's files."""
    if name == "device":
        j = _load(d / "device.json")
        if j is None:
            return False, "no device.json", None
        ok = smoke or j.get("cuda", False)
        return ok, f"{j.get('gpu') or 'no GPU'}; torch {j.get('torch')}, triton {j.get('triton')}", j
    if name == "model":
        j = _load(d / "model.json")
        if j is None:
            return False, "no model.json", None
        return True, f"{j['model']} converted/cached at {j['path']}", j
    if name == "kernel_tests":
        j = _junit(d / "kernel_tests.xml")
        if j is None:
            return False, "no junit report", None
        write_report(d / "kernel_tests.json", j, quiet=True)
        want = "cpu, triton interpreter" if smoke else "cuda, compiled triton"
        ok = j["tests"] > 0 and not j["failures"] and not j["errors"] and j["mode"] == want
        text = f"{j['passed']} passed, {j['failures'] + j['errors']} failed, {j['skipped']} skipped ({j['mode']})"
        return ok, text, j
    if name == "engine":
        j = _load(d / "engine.json")
        if j is None:
            return False, "no engine.json", None
        g, p = j.get("greedy", {}), j.get("parity", {})
        text = (f"{j['model']} {j['dtype']} on {j['device']} ({j.get('kernel_backend')} kernels): greedy=HF "
                f"{g.get('identical', '?')}/{g.get('prompts', '?')} identical"
                + (" (rest near ties)" if g.get("passed") and g.get("identical") != g.get("prompts") else "")
                + f"; parity {p.get('ops', '?')} ops, max err {p.get('max_rel_error', float('nan')):.1e}")
        for part in (g, p):
            if "error" in part:
                text += f"; {part['error'][:120]}"
        return bool(j.get("passed")), text, j
    if name == "kernels":
        j = _load(d / "kernels.json")
        if j is None:
            return False, "no kernels.json", None
        parts = []
        for r in j["kv_copy"]["results"]:
            if "skipped" in r:
                parts.append(f"fork {r['fork_rows']}: skipped")
            else:
                parts.append(f"fork {r['fork_rows']}: {100 * r['frac_of_same_bytes_copy']:.0f}% of copy, "
                             f"{r['speedup_vs_loop']:.1f}x loop")
        for r in j["score"]:
            parts.append(f"score B={r['batch']}: {r['speedup_vs_lsm_gather']:.2f}x lsm+gather")
        met = [r.get("meets_goals", r.get("meets_goal")) for r in j["kv_copy"]["results"] + j["score"]
               if "skipped" not in r]
        goals = "timings not meaningful (smoke)" if smoke else f"goals met {sum(map(bool, met))}/{len(met)}"
        ok = bool(j.get("smoke")) == smoke and any("skipped" not in r for r in j["kv_copy"]["results"])
        return ok, "; ".join(parts) + f" [{goals}]", j
    if name == "throughput":
        j = _load(d / "throughput.json")
        if j is None:
            return False, "no throughput.json", None
        parts = []
        if "greedy" in j:
            a = j["greedy"]["agreement_with_hf"]
            parts.append(f"greedy {j['greedy']['ratio_to_hf']:.2f}x HF ({a['identical']}/{a['of']} identical)")
        if "sampling" in j:
            parts.append(f"sampling n=4 {j['sampling']['ratio_to_hf']:.2f}x HF")
        if "ids" in j:
            parts.append(f"IDS n=4 {j['ids']['ratio_to_concurrency_1']:.2f}x concurrency 1")
        full = [r for rows in j["runs"].values() for r in rows if r["route"].endswith("full")]
        if full:
            parts.append(f"engine {max(r['tokens_per_s'] for r in full):.0f} tok/s peak")
        ok = bool(j.get("smoke")) == smoke and set(j["runs"]) == {"greedy", "sampling", "ids"}
        return ok, f"{len(j['problem_ids'])} problems: " + ", ".join(parts), j
    return True, "", None


def cmd_summary(args) -> int:
    d = Path(args.dir)
    stages = []
    with open(d / "stages.tsv") as f:
        for name, rc, secs, limit in csv.reader(f, delimiter="\t"):
            stages.append((name, int(rc), int(secs), limit))
    rows, all_ok = [], True
    for name, rc, secs, limit in stages:
        if rc == -1:
            status, text, j = "skipped", limit, None  # limit holds the reason
            limit = "-"
        else:
            good, text, j = stage_details(name, d, args.smoke)
            if rc in (124, 137):
                status = "TIMEOUT"
            elif rc != 0:
                status = f"FAIL rc={rc}"
            elif not good:
                status = "FAIL"
            else:
                status = "ok"
        all_ok &= status in ("ok", "skipped")
        rows.append({"stage": name, "status": status, "seconds": secs, "limit_s": limit, "result": text})
    summary = {"smoke": args.smoke, "all_passed": all_ok, "stages": rows,
               "total_s": sum(r["seconds"] for r in rows if r["seconds"] is not None)}
    write_report(d / "summary.json", summary, quiet=True)
    print(f"\nGPU check{' (smoke: CPU, Triton interpreter, toy sizes)' if args.smoke else ''} -- results in {d}")
    print(f"{'stage':<13} {'status':<10} {'time':>6} {'limit':>6}  result")
    for r in rows:
        limit = r["limit_s"] if r["limit_s"] == "-" else f"{r['limit_s']}s"
        print(f"{r['stage']:<13} {r['status']:<10} {_fmt_time(r['seconds']):>6} {limit:>6}  {r['result']}")
    print(f"{'total':<13} {'':<10} {_fmt_time(summary['total_s']):>6}")
    print("ALL STAGES PASSED" if all_ok else "SOME STAGES FAILED: " + ", ".join(
        r["stage"] for r in rows if r["status"] not in ("ok", "skipped")))
    return 0 if all_ok else 1


def cmd_device(args) -> int:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "python": sys.version.split()[0]}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if info["cuda"]:
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=list(torch.cuda.get_device_capability(0)),
                    memory_gib=round(p.total_memory / 2**30, 1), cuda_runtime=torch.version.cuda)
    print(json.dumps(info))
    write_report(args.out, info, quiet=True)
    return 0 if (info["cuda"] or args.smoke) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("engine")
    add_model_args(e, model="qwen2.5-coder-0.5b-instruct", dtype="bfloat16", dtypes=tuple(NEAR_TIE), device="cuda")
    e.add_argument("--prompts", type=int, default=8)
    e.add_argument("--max-new", type=int, default=128)
    e.add_argument("--ops", type=int, default=40)
    e.add_argument("--out", required=True)
    m = sub.add_parser("model-path")
    m.add_argument("name")
    m.add_argument("--out", default=None)
    s = sub.add_parser("synth-data")
    s.add_argument("dir")
    s.add_argument("--level", type=int, default=2)
    s.add_argument("--count", type=int, default=64)
    dv = sub.add_parser("device")
    dv.add_argument("--out", required=True)
    dv.add_argument("--smoke", action="store_true")
    su = sub.add_parser("summary")
    su.add_argument("dir")
    su.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    return {"engine": cmd_engine, "model-path": cmd_model_path, "synth-data": cmd_synth_data,
            "device": cmd_device, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
