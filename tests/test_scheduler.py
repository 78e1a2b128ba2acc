"""Many searches on one engine: concurrent == serial for every strategy, admission under a row
budget, local faults, per-row samplers in one step, kill + resume of a concurrent bench run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ByteTokenizer, tiny_model
from decodesearch.bench.datasets import load_problems
from decodesearch.bench.results import read_results
from decodesearch.engine import CapacityError, Engine, Sampler, Stop
from decodesearch.engine.scheduler import Job, Scheduler, run_one
from decodesearch.strategies import (
    DVTS, IDS, RAIN, BeamSearch, BestOfN, BudgetForcing, Greedy, PromptFormat, Sampling, SelfConsistency, Strategy,
)

PLAIN = PromptFormat(instruction=None, chat=False)
NO_EOS = Stop(eos_ids=())
PROMPTS = ["What is 2+3?", "hi", "A longer prompt, so that rows differ in length.", "x", "Name a prime.", "Why?"]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama"), ByteTokenizer()


def _crc(text: str) -> float:
    import zlib

    return float(zlib.crc32(text.encode()) % 3 - 1)


STRATEGIES = {
    "greedy": lambda: Greedy(max_tokens=12, prompt_format=PLAIN, stop=Stop(strings=("e",))),
    "sampling": lambda: Sampling(n=3, max_tokens=10, prompt_format=PLAIN, seed=5,
                                 sampler=Sampler(temperature=0.9, top_k=20, top_p=0.9)),
    "best_of_n": lambda: BestOfN(n=2, max_tokens=8, prompt_format=PLAIN, seed=1),
    "self_consistency": lambda: SelfConsistency(n=3, max_tokens=8, prompt_format=PLAIN, seed=2,
                                                sampler=Sampler(temperature=1.0, min_p=0.05)),
    "budget_forcing": lambda: BudgetForcing(max_thinking_tokens=10, max_answer_tokens=4, min_thinking_tokens=6,
                                            end_of_thinking="e", prompt_format=PLAIN),
    "ids": lambda: IDS(n=2, b0=3, gamma=2.0, max_tokens=14, stop=NO_EOS, policy="force", prompt_format=PLAIN, seed=3),
    "beam_search": lambda: BeamSearch(n=4, beam_width=2, scorer="logprob", max_tokens=12, max_steps=3, seed=6,
                                      delimiter="e", prompt_format=PLAIN),
    "dvts": lambda: DVTS(n=4, beam_width=2, scorer="logprob", max_tokens=12, max_steps=3, seed=7, delimiter="e",
                         prompt_format=PLAIN),
    "rain": lambda: RAIN(num_candidates=3, set_lengths=(1, 2), max_tokens=5, rollout_max_tokens=3, max_visits=4,
                         min_new_searches=2, evaluator=_crc, embedder=None, max_cached_branches=4, seed=4,
                         prompt_format=PLAIN),
}


def _rounded(x):
    """Floats to 4 decimals (log-probs of rows batched differently agree to float tolerance only)."""
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def _view(result, cost: tuple[str, ...] = ()):
    """Everything a result says (tokens exactly, floats to 4 decimals), except timings, forward-call
    counts and the evaluator's running totals over all searches, which depend on the interleaving,
    and the `cost` fields (at the top, in trace events and in their counters)."""
    d = result.as_dict()
    d.pop("wall_s")
    drop = ("forward_calls", "evaluator", *cost)

    def strip(e: dict) -> dict:
        return {k: strip(v) if k == "counters" else v for k, v in e.items() if k not in drop}

    for k in cost:
        d.pop(k, None)
    d["trace"] = [strip(e) for e in d["trace"] if e["event"] != "engine_stats"]
    return _rounded(d)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_concurrent_equals_serial(llama, name):
    model, tok = llama
    serial_engine, conc_engine = Engine(model, tok, max_rows=128), Engine(model, tok, max_rows=128)
    serial = STRATEGIES[name]().run(serial_engine, PROMPTS, concurrency=1)
    concurrent = STRATEGIES[name]().run(conc_engine, PROMPTS)
    # RAIN's node states beyond its pins stay in the shared prefix cache while it has room, so what a
    # rebuilt state costs depends on the other searches; its results and tree must not.
    cost = ("tokens_forwarded", "materialized", "materialized_whole", "materialized_tokens") if name == "rain" else ()
    assert [_view(r, cost) for r in concurrent] == [_view(r, cost) for r in serial]
    assert all(r.token_ids or r.samples for r in serial)
    # It really ran together: fewer forwards, more rows at once, and nothing left behind.
    assert conc_engine.stats.forward_calls < serial_engine.stats.forward_calls
    assert conc_engine.stats.peak_rows > serial_engine.stats.peak_rows
    if not cost:
        assert conc_engine.stats.tokens_forwarded == serial_engine.stats.tokens_forwarded
    assert conc_engine.live_branches == [] and serial_engine.live_branches == []
    assert not any(conc_engine.prefix_cache.pins(e) for e in conc_engine.prefix_cache.entries)


def test_admission_queues_searches_when_rows_run_out(llama):
    model, tok = llama
    strat = Sampling(n=3, max_tokens=6, prompt_format=PLAIN, seed=0)  # declares 4 rows per search
    engine = Engine(model, tok, max_rows=9)
    results = strat.run(engine, PROMPTS)  # 6 searches x 4 rows = 24 > 9: at most 2 in flight
    assert len(results) == len(PROMPTS) and engine.stats.peak_rows == 8
    assert [r.token_ids for r in results] == [r.token_ids for r in strat.run(Engine(model, tok), PROMPTS, concurrency=1)]
    with pytest.raises(CapacityError, match="max_rows=3"):
        strat.run(Engine(model, tok, max_rows=3), ["hi"])


def test_admission_under_max_kv_bytes(llama):
    """Searches whose rows x longest branch exceed `max_kv_bytes` together queue (none fails), the
    store never exceeds the bound, results equal an unbounded run; a search that alone can never
    fit fails at once naming max_kv_bytes while the others go on."""
    model, tok = llama
    strat = Sampling(n=3, max_tokens=40, prompt_format=PLAIN, seed=0, stop=NO_EOS)  # 4 rows each
    probe = Engine(model, tok)
    longest = max(strat.peak_cols(tok, len(x)) for x in (strat.prompt_format.encode(tok, p) for p in PROMPTS))
    bound = 9 * longest * probe.cell_bytes  # about two searches at once
    engine = Engine(model, tok, max_kv_bytes=bound, initial_cols=16)
    results = strat.run(engine, PROMPTS)
    assert len(results) == len(PROMPTS) and all(len(s.token_ids) == 40 for r in results for s in r.samples)
    assert engine.stats.peak_kv_bytes <= bound and 4 < engine.stats.peak_rows <= 9
    assert [r.token_ids for r in results] == [r.token_ids for r in strat.run(Engine(model, tok), PROMPTS)]
    big = Sampling(n=3, max_tokens=400, prompt_format=PLAIN, seed=0)
    done = list(big.stream(Engine(model, tok, max_kv_bytes=bound), [tok.encode("hi")]))
    assert isinstance(done[0].error, CapacityError) and "max_kv_bytes" in str(done[0].error)


def test_store_moves_live_rows_to_grow_columns_under_max_kv_bytes(llama):
    """With most rows released, a long branch gets its columns by cutting the row capacity down to
    the live branches (moved to the front rows); their KV stays exact."""
    model, tok = llama
    cell = Engine(model, tok).cell_bytes
    engine = Engine(model, tok, max_rows=8, max_kv_bytes=8 * 32 * cell, initial_cols=16)
    kids = engine.fork(engine.prefill([5, 6, 7]), 7)
    keep = kids[-1]
    for b in [engine.live_branches[0], *kids[:-1]]:
        engine.release(b)
    engine.decode([keep], 100, stop=NO_EOS)
    assert keep.row == 0 and keep.length == 103 and engine.kv_bytes <= 8 * 32 * cell
    with torch.no_grad():
        want = model(torch.tensor([keep.tokens])).logits[0, -1].float()
    assert torch.allclose(engine.logits([keep])[0], want, atol=1e-4)
    assert engine.free_rows == 1  # 2 rows x 103+ columns would not fit
    with pytest.raises(CapacityError, match="max_kv_bytes"):
        engine.fork(keep, 2)


class _Greedy2(Strategy):
    """Declares 2 rows; forks `extra` more than that on prompt "wide", raises on prompt "boom"."""

    name = "test_greedy2"

    def __init__(self, extra=0, **kw):
        super().__init__(max_tokens=6, prompt_format=PLAIN, **kw)
        self.extra = extra

    async def search(self, engine, root, prompt):
        from decodesearch.strategies.base import make_sample

        wide = prompt == "wide"
        kids = await engine.fork(root, 1 + (self.extra if wide else 0))
        await engine.decode(kids, 3)
        if prompt == "boom":
            raise RuntimeError("boom in one search")
        s = make_sample(kids[0], 3)
        return self.result(prompt, s, [s], [])


def test_one_failing_search_stays_local(llama):
    model, tok = llama
    engine = Engine(model, tok)
    prompts = ["a", "boom", "c", "d"]
    strat = _Greedy2()
    ids = [strat.prompt_format.encode(tok, p) for p in prompts]
    done = {f.index: f for f in strat.stream(engine, ids, prompts)}
    assert isinstance(done[1].error, RuntimeError) and "boom" in str(done[1].error)
    assert all(done[i].error is None and done[i].result.token_ids for i in (0, 2, 3))
    assert engine.live_branches == []
    with pytest.raises(RuntimeError, match="boom"):
        strat.run(engine, prompts)
    assert engine.live_branches == []


def test_a_search_over_its_declaration_waits_or_fails_alone(llama):
    model, tok = llama
    # "wide" forks 3 rows (declared 2); with 5 rows it must wait for the others to finish, then fits.
    engine = Engine(model, tok, max_rows=5)
    prompts = ["a", "wide", "c", "d"]
    res = _Greedy2(extra=2).run(engine, prompts)
    assert len(res) == 4 and engine.live_branches == []
    # Alone, on an engine that can never hold it: CapacityError for that search only.
    tight = Engine(model, tok, max_rows=3)
    ids = [PLAIN.encode(tok, p) for p in ("wide", "a")]
    out = {f.index: f for f in _Greedy2(extra=2).stream(tight, ids, ["wide", "a"])}
    assert isinstance(out[0].error, CapacityError) and "max_rows=3" in str(out[0].error)
    assert out[1].error is None and tight.live_branches == []


def test_per_row_samplers_and_stops_in_one_step(llama):
    model, tok = llama
    engine = Engine(model, tok)
    root = engine.prefill(tok.encode("Q: go"), seed=9)
    samplers = [Sampler(temperature=0.0), Sampler(temperature=0.8, top_k=5), Sampler(temperature=1.3, top_p=0.7),
                Sampler(temperature=1.0, min_p=0.2)]
    stops = [None, Stop(strings=("a",)), None, Stop(eos_ids=())]
    kids = engine.fork(root, 4)
    calls = engine.stats.forward_calls
    together = engine.decode(kids, [8, 6, 7, 8], samplers, stops)
    assert engine.stats.forward_calls - calls <= 8  # one forward per step for all four rows
    other = Engine(model, tok)
    kids = other.fork(other.prefill(tok.encode("Q: go"), seed=9), 4)  # the same seeds, row by row
    alone = [other.decode([k], m, s, st)[0] for k, s, st, m in zip(kids, samplers, stops, [8, 6, 7, 8])]
    assert together == alone
    assert len(set(map(tuple, together))) == 4
    # The vectorised filter equals the one-sampler filter row by row.
    logits = torch.randn(4, 50)
    from decodesearch.engine.sampling import filtered_probs

    mixed = filtered_probs(logits, samplers)
    for i, s in enumerate(samplers):
        assert torch.equal(mixed[i], s.probs(logits[i : i + 1])[0])


def test_scheduler_merges_forwards_of_different_searches(llama):
    model, tok = llama
    engine = Engine(model, tok)

    async def extend_twice(ctx, ids):
        root = await ctx.prefill(ids)
        await ctx.extend([root], [[5, 6, 7]])
        return root.length

    jobs = [Job(lambda ctx, i=i: extend_twice(ctx, list(range(1, 4 + i))), 1) for i in range(5)]
    calls = engine.stats.forward_calls
    lengths = {f.index: f.result for f in Scheduler(engine).run(jobs)}
    assert lengths == {i: 3 + i + 3 for i in range(5)}
    assert engine.stats.forward_calls - calls == 2  # 5 ragged prefills in one call, 5 extends in one
    # No autograd graph is kept across the scheduler's forwards (it would hold every activation).
    assert not engine.backend.hidden.requires_grad and not any(layer.keys.requires_grad for layer in engine.backend.store.layers)
    assert engine.live_branches == []
    with pytest.raises(ValueError, match="concurrency"):
        Scheduler(engine, concurrency=0)
    assert run_one(engine, lambda ctx: extend_twice(ctx, [1, 2])) == 5


def test_concurrent_bench_killed_and_resumed(tiny_dir, tmp_path):
    """`decodesearch bench` at full concurrency, SIGKILLed mid-run, then rerun: every problem once."""
    out = tmp_path / "run.jsonl"
    cmd = [sys.executable, "-m", "decodesearch", "bench", "--model", tiny_dir, "--dataset", "arith", "--limit", "24",
           "--strategy", "sampling", "--n", "2", "--max-tokens", "24", "--out", str(out), "--quiet",
           "--concurrency", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and len(out.read_text().splitlines()) >= 4:  # header + >= 3 records
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = [json.loads(x)["id"] for x in out.read_text().splitlines()[1:] if x.strip().endswith("}")]
    assert 3 <= len(first) < 24
    rerun = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ids = [r["id"] for r in read_results(out)[1]]
    assert sorted(ids) == sorted(p.id for p in load_problems("arith", limit=24)) and len(ids) == len(set(ids))
    assert ids[: len(first)] == first  # what was on disk before the kill is kept as it was
