"""The benchmark runner: records, resume, config refusal, sharding and merge (in-process ranks)."""


import pytest

from conftest import ByteTokenizer, tiny_model
from decodesearch.bench.datasets import load_problems
from decodesearch.bench.results import read_results, shard_path
from decodesearch.bench.runner import merge, run_bench
from decodesearch.engine import Engine
from decodesearch.strategies import IDS, PromptFormat, Sampling

PLAIN = PromptFormat(instruction=None, chat=False)


@pytest.fixture(scope="module")
def engine():
    return Engine(tiny_model("llama"), ByteTokenizer())


def config(**extra):
    return {"model": "tiny-llama", "dataset": "arith", "strategy": "sampling", "n": 2, "max_tokens": 8, **extra}


def test_records_resume_and_refusal(engine, tmp_path):
    out = tmp_path / "run.jsonl"
    strat = Sampling(n=2, max_tokens=8, prompt_format=PLAIN, seed=0)
    assert run_bench(engine, strat, load_problems("arith", limit=3), str(out), config(limit=3), progress=False) == 3
    cfg, recs = read_results(out)
    assert [r["id"] for r in recs] == [p.id for p in load_problems("arith", limit=3)]
    r = recs[0]
    assert len(r["samples"]) == 2 and r["tokens_forwarded"] > 0 and isinstance(r["correct"], bool)
    assert r["trace"]["events"][0]["event"] == "fork"
    # Same command with a larger limit: only the new problems run.
    assert run_bench(engine, strat, load_problems("arith", limit=5), str(out), config(limit=5), progress=False) == 2
    ids = [r["id"] for r in read_results(out)[1]]
    assert len(ids) == len(set(ids)) == 5
    before = out.read_bytes()
    with pytest.raises(ValueError, match="max_tokens"):
        run_bench(engine, strat, load_problems("arith", limit=5), str(out), config(max_tokens=9), progress=False)
    assert out.read_bytes() == before


def test_scored_samples_give_weighted_at_k(engine, tmp_path):
    """Best-of-N with a scorer records each sample's score, so the report has weighted@k."""
    from decodesearch.bench.report import summarize
    from decodesearch.strategies import BestOfN

    out = tmp_path / "bon.jsonl"
    strat = BestOfN(n=2, max_tokens=6, prompt_format=PLAIN, seed=0, step_scorer="logprob")
    run_bench(engine, strat, load_problems("arith", limit=2), str(out), config(strategy="best_of_n", limit=2),
              progress=False)
    recs = read_results(out)[1]
    assert all(isinstance(s["score"], float) for r in recs for s in r["samples"])
    assert set(summarize(out)["weighted@k"]) == {1, 2}


def test_sharded_ranks_and_merge(engine, tmp_path):
    out = tmp_path / "run.jsonl"
    problems = load_problems("arith", limit=5)
    strat = IDS(n=2, b0=2, max_tokens=6, prompt_format=PLAIN, seed=0)
    for rank in (0, 1):
        run_bench(engine, strat, problems, str(out), config(), rank=rank, world_size=2, progress=False)
    assert len(read_results(shard_path(out, 0))[1]) == 3 and len(read_results(shard_path(out, 1))[1]) == 2
    assert merge(str(out), config(), 2, [p.id for p in problems]) == 5
    assert [r["id"] for r in read_results(out)[1]] == [p.id for p in problems]
    assert not shard_path(out, 0).exists()
    rec = read_results(out)[1][0]
    assert all(len(s["answers_before_triggers"]) == len(s["correct_before_triggers"]) for s in rec["samples"])
    # A rerun after the merge finds nothing left to do.
    for rank in (0, 1):
        assert run_bench(engine, strat, problems, str(out), config(), rank=rank, world_size=2, progress=False) == 0


def _launch(tiny_dir, out, limit, max_tokens, *extra, popen=False):
    """The README's command: `accelerate launch --multi_gpu --num_processes 2 -m decodesearch bench ...`
    (the console script, no shim); on a machine without CUDA its two processes run on the CPU."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "-m", "decodesearch", "bench",
           "--model", tiny_dir, "--dataset", "arith", "--limit", str(limit), "--strategy", "greedy",
           "--max-tokens", str(max_tokens), "--device", "cpu", "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    if popen:
        return subprocess.Popen(cmd, env=env, cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=out.parent)


def test_accelerate_launch_two_cpu_processes(tiny_dir, tmp_path):
    """Two real CPU ranks each write their shard; rank 1 is killed mid-run; rerunning the same command
    resumes both (rank-labelled progress, rank 1's saved records kept, not solved again) and rank 0
    merges every problem once."""
    import os
    import signal
    import time

    import psutil

    out = tmp_path / "killed.jsonl"
    launcher = _launch(tiny_dir, out, 16, 64, "--concurrency", "1", popen=True)
    shard1 = shard_path(out, 1)
    deadline = time.time() + 120
    while time.time() < deadline and not (shard1.exists() and shard1.read_text().count("\n") >= 2):
        time.sleep(0.02)
    ranks = [c for c in psutil.Process(launcher.pid).children(recursive=True)
             if "decodesearch" in " ".join(c.cmdline()) and c.environ().get("RANK") == "1"]
    assert ranks, "rank 1 not found"
    os.kill(ranks[0].pid, signal.SIGKILL)
    _, killed_err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    kept = {r["id"]: r for r in read_results(shard1)[1]}
    assert kept and len(kept) < 8
    proc = _launch(tiny_dir, out, 16, 64, "--concurrency", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0:" in killed_err + proc.stderr and "rank 1:" in killed_err + proc.stderr  # both ranks ran (tqdm labels)
    assert not shard_path(out, 0).exists() and not shard_path(out, 1).exists()  # merged by rank 0
    assert proc.stdout.count("accuracy") == 1  # one summary, from rank 0
    merged = read_results(out)[1]
    assert sorted(r["id"] for r in merged) == sorted(p.id for p in load_problems("arith", limit=16))
    assert all(r == kept[r["id"]] for r in merged if r["id"] in kept)  # resumed, not solved again


class _FailsOnce(Sampling):
    """Sampling whose search raises the first time it meets a problem containing 'boom'."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.failed = False

    async def search(self, engine, root, prompt):
        if "boom" in prompt and not self.failed:
            self.failed = True
            raise RuntimeError("flaky failure")
        return await super().search(engine, root, prompt)


@pytest.mark.parametrize("world_size", [1, 2])
def test_an_errored_problem_is_kept_until_retried(engine, tmp_path, world_size):
    from decodesearch.bench.datasets import Problem
    from decodesearch.bench.report import summarize

    problems = [Problem("p0", "1+1", "2"), Problem("p1", "boom 2+2", "4"), Problem("p2", "3+3", "6")]
    out = tmp_path / "run.jsonl"
    strat = _FailsOnce(n=2, max_tokens=4, prompt_format=PLAIN, seed=0)

    def run(retry=False):
        n = sum(run_bench(engine, strat, problems, str(out), config(), rank=r, world_size=world_size,
                          progress=False, retry_errors=retry) for r in range(world_size))
        if world_size > 1:
            merge(str(out), config(), world_size, [p.id for p in problems])
        return n

    assert run() == 3
    recs = {r["id"]: r for r in read_results(out)[1]}
    assert recs["p1"]["error"] == "RuntimeError: flaky failure" and recs["p1"]["correct"] is False
    assert summarize(out)["errors"] == 1
    assert run() == 0  # a plain rerun skips it
    assert run(retry=True) == 1  # only the errored problem runs again; its new record supersedes the error
    recs = read_results(out)[1]
    assert sorted(r["id"] for r in recs) == ["p0", "p1", "p2"] and not any(r.get("error") for r in recs)
    assert summarize(out)["errors"] == 0 and all(len(r["samples"]) == 2 for r in recs)
    assert run(retry=True) == 0


def _comparable(record):
    return {k: v for k, v in record.items() if k not in ("wall_s", "tokens_forwarded", "trace")}


def test_strategies_run_together_share_steps_and_equal_their_runs_alone(engine, tmp_path):
    """`run_benches`: greedy, sampling and IDS over the same problems in one scheduler write the same
    records as each run alone, in fewer forward calls than the three runs one after another."""
    from decodesearch.bench.runner import BenchRun, run_benches
    from decodesearch.strategies import Greedy

    problems = load_problems("arith", limit=3)

    def strategies():
        return {"greedy": Greedy(max_tokens=6, prompt_format=PLAIN),
                "sampling": Sampling(n=2, max_tokens=6, prompt_format=PLAIN, seed=0),
                "ids": IDS(n=2, max_tokens=8, b0=3, prompt_format=PLAIN, seed=1)}

    calls = engine.stats.forward_calls
    alone = {}
    for name, strat in strategies().items():
        run_bench(engine, strat, problems, str(tmp_path / f"alone_{name}.jsonl"), config(strategy=name), progress=False)
        alone[name] = read_results(tmp_path / f"alone_{name}.jsonl")[1]
    calls_alone = engine.stats.forward_calls - calls

    calls = engine.stats.forward_calls
    runs = [BenchRun(strat, str(tmp_path / f"together_{name}.jsonl"), config(strategy=name))
            for name, strat in strategies().items()]
    assert run_benches(engine, runs, problems, progress=False) == 9
    calls_together = engine.stats.forward_calls - calls
    for name in alone:
        together = read_results(tmp_path / f"together_{name}.jsonl")[1]
        assert [r["id"] for r in together] != [] and len(together) == 3
        assert sorted(map(str, map(_comparable, together))) == sorted(map(str, map(_comparable, alone[name])))
    assert calls_together < calls_alone
    assert engine.live_branches == []
