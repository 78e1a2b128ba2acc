"""Run strategies over a dataset into resumable results files (`decodesearch bench`, the demo).

The problems run concurrently on one engine (`stream_searches`: continuous batching, the next
problem starts as soon as one finishes). Each finished problem is appended and fsynced at once, so
an interrupted run loses nothing and a rerun of the same command skips the finished ids. A problem
whose search raised is recorded with its id and error (`"error"`, not correct; one line on stderr
names it) and the others go on; a rerun skips it like any finished problem unless `retry_errors`
(`bench --retry-errors`), whose new record supersedes the error. Problem i of the dataset is seeded
`derive_seed(seed, i)` whatever the concurrency, the sharding or the resume point. Under `accelerate
launch` (more than one process), problems are dealt round-robin to ranks, each rank writes its own
shard (`run.rank{i}.jsonl`) and rank 0 merges the shards into the requested file. Several
strategies run together (`run_benches`, one file each) share every forward step.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from decodesearch.bench.datasets import Problem
from decodesearch.bench.results import merge_shards, open_results, read_results, shard_path
from decodesearch.engine import Engine, derive_seed
from decodesearch.scoring.answers import check_answer
from decodesearch.strategies import SearchResult, Strategy, stream_searches

# Config keys that do not change results, so they never block a resume.
RESUME_IGNORES = ("limit",)


def to_record(problem: Problem, result: SearchResult) -> dict:
    """The results-file record (schema in `decodesearch.bench.results`) of one solved problem."""
    checked: dict[str | None, bool] = {}  # samples repeat answers; a slow check runs once

    def check(answer: str | None) -> bool:
        if answer not in checked:
            checked[answer] = check_answer(answer, problem.answer, problem.kind)
        return checked[answer]

    samples = []
    for s in result.samples:
        samples.append({
            "text": s.text,
            "answer": s.answer,
            "correct": check(s.answer),
            "answers_before_triggers": list(s.answers_before_triggers),
            "correct_before_triggers": [check(a) for a in s.answers_before_triggers],
            "tokens_generated": s.tokens_generated,
            "tokens_forced": s.tokens_forced,
            "score": s.score,
        })
    return {
        "id": problem.id,
        "problem": problem.problem,
        "gold": problem.answer,
        "kind": problem.kind,
        "answer": result.answer,
        "correct": check(result.answer),
        "samples": samples,
        "tokens_generated": result.tokens_generated,
        "tokens_forwarded": result.tokens_forwarded,
        "wall_s": result.wall_s,
        "strategy": result.strategy,
        "trace": {"events": [e.as_dict() for e in result.trace]},
    }


class Progress:
    """The progress bar on stderr (tqdm): problems done of this rank's share, running accuracy,
    generated tokens/s and engine rows in use; tqdm adds the rate and ETA."""

    def __init__(self, total: int, done: int = 0, correct: int = 0, label: str = ""):
        from tqdm import tqdm

        self.done, self.correct, self.tokens, self.t0 = done, correct, 0, time.perf_counter()
        self.bar = tqdm(total=total, initial=done, desc=label.strip() or None, unit="problem",
                        file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def update(self, correct: bool, tokens: int, rows: int) -> None:
        self.done += 1
        self.correct += bool(correct)
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"acc {100 * self.correct / self.done:.1f}% | {rate:.1f} tok/s | rows {rows}",
                                 refresh=False)
        self.bar.update(1)

    def write(self, line: str) -> None:
        """A message line that does not break the bar."""
        self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def error_record(problem: Problem, error: BaseException, strategy: str) -> dict:
    """The record of a problem whose search raised: not correct, with the error text."""
    return {"id": problem.id, "problem": problem.problem, "gold": problem.answer, "kind": problem.kind,
            "answer": None, "correct": False, "samples": [], "tokens_generated": 0, "tokens_forwarded": 0,
            "wall_s": 0.0, "strategy": strategy, "error": f"{type(error).__name__}: {error}"}


def check_out(out: str, config: dict, *, rank: int = 0, world_size: int = 1) -> None:
    """Refuse, before any model loads, an `out` that cannot take this run: a directory, a file (or
    this rank's shard) written by a run with another configuration or not a results file, or one
    another process is writing. Writes nothing."""
    from decodesearch.bench.results import _scan_bytes, acquire_writer_lock, config_diff

    paths = [Path(out)] if world_size == 1 else [Path(out), shard_path(out, rank)]
    for path in paths:
        if path.is_dir():
            raise IsADirectoryError(f"--out {path} is a directory; give the path of a results file (.jsonl)")
        if not path.exists():
            continue
        header = _scan_bytes(path.read_bytes(), path).header  # ValueError: not a results file
        if header is None:  # empty, or a header torn by a run killed at its start
            continue
        diffs = config_diff(header["config"], config, RESUME_IGNORES)
        if diffs:
            raise ValueError(f"{path} was written by a run with a different configuration:\n  " + "\n  ".join(diffs)
                             + "\nUse another output path, or rerun with the file's configuration to resume it.")
        acquire_writer_lock(path).release()


@dataclass(frozen=True)
class BenchRun:
    """One strategy's run over the problems into results file `out` with header `config`."""

    strategy: Strategy
    out: str
    config: dict


def run_bench(engine: Engine, strategy: Strategy, problems: Sequence[Problem], out: str, config: dict,
              **kwargs) -> int:
    """`run_benches` of one strategy."""
    return run_benches(engine, [BenchRun(strategy, out, config)], problems, **kwargs)


def run_benches(
    engine: Engine,
    runs: Sequence[BenchRun],
    problems: Sequence[Problem],
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    concurrency: int | None = None,
    retry_errors: bool = False,
) -> int:
    """Solve each problem not yet in a run's `out` (or this rank's shard of it), all runs' searches
    together on one engine (`stream_searches`: `concurrency` searches at a time, None: as many as
    the engine's rows admit), and append each record to its run's file as it finishes; a problem
    whose search raises is recorded with its error and the run goes on. With `retry_errors`,
    problems recorded with an error run again. Returns the number of problems solved in this call
    over all runs (errors included). A configuration that differs from a file's header is refused
    (ValueError naming the keys) before anything runs. Each run's records equal those of the run
    alone."""
    with contextlib.ExitStack() as stack:
        groups, todos, files, done_before, total = [], [], [], [], 0
        for run in runs:
            path = run.out if world_size == 1 else shard_path(run.out, rank)
            merged = set()
            if world_size > 1 and Path(run.out).exists():  # a resumed sharded run: skip what was merged already
                merged = {r["id"] for r in read_results(run.out)[1] if not (retry_errors and r.get("error"))}
            strategy = run.strategy
            base = strategy.seed if strategy.seed is not None else engine.seed
            mine = [(i, p) for i, p in enumerate(problems) if i % world_size == rank and p.id not in merged]
            mine_ids = {p.id for _, p in mine}
            results = stack.enter_context(open_results(path, run.config, ignore_keys=RESUME_IGNORES))
            todo = [(i, p) for i, p in mine if p.id not in results or (retry_errors and p.id in results.errored)]
            todo_ids = {p.id for _, p in todo}
            done_before += [r for r in results.records if r["id"] in mine_ids and r["id"] not in todo_ids]
            total += len(mine)
            ids = [strategy.prompt_format.encode(engine.tokenizer, p.problem) for _, p in todo]
            groups.append(strategy.searches(engine, ids, [p.problem for _, p in todo],
                                            [derive_seed(base, i) for i, _ in todo]))
            todos.append(todo)
            files.append(results)
        bar = Progress(total, len(done_before), sum(bool(r.get("correct")) for r in done_before),
                       label=f"rank {rank} " if world_size > 1 else "") if progress else None
        if bar:
            stack.callback(bar.close)
        stream = stream_searches(engine, groups, concurrency)
        stack.callback(stream.close)
        solved = 0
        for g, f in stream:
            p = todos[g][f.index][1]
            if f.error is not None:
                record = error_record(p, f.error, runs[g].strategy.name)
                line = f"problem {p.id!r} failed ({record['error']}); recorded as an error, going on"
                if bar:
                    bar.write(line)
                else:
                    print(line, file=sys.stderr, flush=True)
            else:
                record = to_record(p, f.result)
            files[g].append(record)
            solved += 1
            if bar:
                bar.update(record["correct"], record["tokens_generated"], len(engine.live_branches))
    return solved


def merge(out: str, config: dict, world_size: int, order: Sequence[str]) -> int:
    """Rank 0, after every rank finished: merge the shards into `out` (shards are removed)."""
    return merge_shards(out, config=config, world_size=world_size, order=list(order),
                        ignore_keys=RESUME_IGNORES, remove=True)
