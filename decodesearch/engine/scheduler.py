"""Many searches on one `Engine`, one forward per step (continuous batching).

A search is a coroutine (`async def`) that gets a `SearchEngine`, the engine's operations for that
search, and awaits `prefill`, `fork`, `extend` and `decode`; `rewind`, `release`, `logits` and
`logprobs` need no forward and run at once. A search never sees the batching: the `Scheduler`
drives every search in flight on one thread. At each step it runs every search until it waits on
the engine, then serves all of them together: the decoding rows of every search pick their next
token in one pass (each with its own sampler and stop rule), and those tokens, every waiting
`extend` and every waiting `prefill` are forwarded together (one forward for the 1-token rows, one
ragged forward for the longer ones, so a long prompt does not pad every decode row to its length).

Admission: each search declares its peak rows (`Job.rows`) and longest branch (`Job.cols`); a search
starts only when the declared peaks of those in flight and its own fit in `max_rows` and (rows x
longest branch) in `max_kv_bytes`, and the next one starts as soon as one finishes. A search that
asks for more rows than are free waits while any other search can still move; when every search in
flight waits for rows, the newest waiting one gets a `CapacityError`. A job whose declaration alone
exceeds `max_rows` or `max_kv_bytes` fails at once with `CapacityError` naming the limit.

Faults stay local: an exception in a search ends that search only; its branches are released and
the exception is reported for its job. Results do not depend on how many searches share a step:
each branch samples from its own seeded generator.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Iterator, Sequence

import torch

from decodesearch.engine.engine import Branch, CapacityError, Decoded, DecodeRow, Engine
from decodesearch.engine.prefix_cache import common_prefix
from decodesearch.engine.sampling import GREEDY, Sampler, Stop


class _Request:
    """Something a search waits on; the scheduler sends back the result."""

    def __await__(self):
        return (yield self)


class _Rows(_Request):
    """`prefill` (branch None: new roots over `prompts`, seeded with `seeds`) or `fork` of `branch`
    into `n`: needs `n` rows."""

    def __init__(self, n: int, branch: Branch | None = None, prompts: list[list[int]] | None = None,
                 seeds: list[int] | None = None, remember: bool = True):
        self.n, self.branch, self.prompts, self.seeds, self.remember = n, branch, prompts, seeds, remember


class _Forward(_Request):
    """Tokens to forward (`extend`, or the prompts of new `roots`, which then go to the prefix
    cache); resolves to `result`."""

    def __init__(self, branches: list[Branch], ids: list[list[int]], result: Any = None, roots: Sequence[Branch] = ()):
        self.branches, self.ids, self.result, self.roots = branches, ids, result, list(roots)


class _Decode(_Request):
    def __init__(self, rows: list[DecodeRow]):
        self.rows = rows


@dataclass
class SearchStats:
    """What one search cost: tokens it had forwarded, prompt tokens taken from the prefix cache,
    forward calls it took part in, rows copied."""

    tokens_forwarded: int = 0
    tokens_reused: int = 0
    forward_calls: int = 0
    rows_copied: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class SearchEngine:
    """One search's view of the engine: the `Engine` operations, with those that forward or need rows
    awaitable. Every branch it creates belongs to the search and is released when the search ends,
    and every prefix-cache pin it takes is dropped then. `rows` is the search's declared row budget
    (`rows_left` what of it is not in use: its live branches and its pins hold rows)."""

    def __init__(self, engine: Engine, rows: int):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.eos_ids = engine.eos_ids
        self.max_context = engine.max_context
        self.rows = rows
        self.stats = SearchStats()
        self.owned: list[Branch] = []
        self.pinned: list[list[int]] = []  # the ids of each pin this search holds

    @property
    def rows_left(self) -> int:
        self.owned = [b for b in self.owned if not b.released]
        return self.rows - len(self.owned) - len(self.pinned)

    async def prefill(self, ids: Sequence[int], seed: int | None = None, *, remember: bool = True) -> Branch:
        return (await self.prefill_batch([ids], None if seed is None else [seed], remember=remember))[0]

    async def prefill_batch(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int] | None = None, *,
                            remember: bool = True) -> list[Branch]:
        """As `Engine.prefill_batch`: new roots, their uncached parts forwarded in one shared step."""
        prompts = [self.engine._check_ids(ids, "ids") for ids in prompts]
        if not prompts:
            raise ValueError("prompts must contain at least one token list")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds has {len(seeds)} entries; expected one per prompt ({len(prompts)})")
        for ids in prompts:
            self.engine._check_context(0, len(ids))
        return await _Rows(len(prompts), prompts=prompts, seeds=None if seeds is None else list(seeds),
                           remember=remember)

    async def fork(self, branch: Branch, n: int) -> list[Branch]:
        self.engine._check_live([branch])
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} is out of range; accepted: an int >= 1")
        return await _Rows(n, branch=branch)

    async def extend(self, branches: Sequence[Branch], ids_per_branch: Sequence[Sequence[int]]) -> None:
        bs, ids = self.engine._check_extend(branches, ids_per_branch)
        await _Forward(bs, ids)

    async def decode(self, branches: Sequence[Branch], max_new_tokens: int | Sequence[int],
                     sampler: Sampler | Sequence[Sampler] = GREEDY,
                     stop: Stop | Sequence[Stop] | None = None,
                     score_under: Sampler | Sequence[Sampler | None] | None = None) -> list[Decoded]:
        """As `Engine.decode`; the rows decode in the scheduler's shared steps."""
        rows = self.engine.decode_rows(branches, max_new_tokens, sampler, stop, score_under)
        if any(r.stop_reason is None for r in rows):
            await _Decode(rows)
        return [r.result() for r in rows]

    def rewind(self, branch: Branch, n: int) -> None:
        self.engine.rewind(branch, n)

    def release(self, branch: Branch, *, cache: bool = False, pin: bool = False) -> bool:
        ids = list(branch.tokens)
        kept = self.engine.release(branch, cache=cache, pin=pin)
        if kept and pin:
            self.pinned.append(ids)
        return kept

    def unpin(self, ids: Sequence[int]) -> None:
        """Drop one of this search's pins on `ids` (ValueError if it holds none)."""
        ids = list(ids)
        if ids not in self.pinned:
            raise ValueError("unpin: this search holds no pin on these ids")
        self.engine.unpin(ids)
        self.pinned.remove(ids)

    def logits(self, branches: Sequence[Branch]) -> torch.Tensor:
        return self.engine.logits(branches)

    def logprobs(self, branches: Sequence[Branch], candidate_ids) -> torch.Tensor:
        return self.engine.logprobs(branches, candidate_ids)

    def close(self) -> None:
        """Release every branch of this search still live and drop its pins."""
        for b in self.owned:
            if not b.released:
                self.engine.release(b)
        self.owned = []
        for ids in self.pinned:
            self.engine.unpin(ids)
        self.pinned = []


@dataclass
class Job:
    """One search to run: `search(engine)` is called with the search's `SearchEngine` and returns
    the coroutine; `rows` is its declared peak of live rows and `cols` its longest branch in tokens
    (0: unknown), which admission checks against `max_kv_bytes`."""

    search: Callable[[SearchEngine], Awaitable[Any]]
    rows: int
    cols: int = 0


@dataclass
class _Task:
    index: int
    job: Job
    ctx: SearchEngine
    coro: Any
    send: Any = None
    throw: BaseException | None = None
    ready: bool = True
    waiting: _Request | None = None
    t0: float = field(default_factory=time.perf_counter)


@dataclass
class Finished:
    """A finished job: its index, the search's return value or the exception that ended it, wall
    seconds from its start to its end, and what it cost."""

    index: int
    result: Any
    error: BaseException | None
    wall_s: float
    stats: SearchStats


class Scheduler:
    """Runs `Job`s concurrently on `engine` (see the module docstring). `concurrency` bounds the
    searches in flight (None: as many as the row budget admits)."""

    def __init__(self, engine: Engine, concurrency: int | None = None):
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                        or concurrency < 1):
            raise ValueError(f"concurrency={concurrency!r} is out of range; accepted: an int >= 1, or None (as many as fit)")
        self.engine = engine
        self.concurrency = concurrency or 1 << 30
        self.in_flight = 0
        self._tasks: list[_Task] = []

    def run(self, jobs: Iterable[Job]) -> Iterator[Finished]:
        """Yield a `Finished` for every job, in the order they finish."""
        engine = self.engine
        queue = deque(enumerate(jobs))
        tasks: list[_Task] = []
        self._tasks = tasks
        try:
            while queue or tasks:
                while queue and len(tasks) < self.concurrency:
                    index, job = queue[0]
                    err = self._never_fits(job)
                    if err is not None:
                        queue.popleft()
                        yield Finished(index, None, err, 0.0, SearchStats())
                        continue
                    if tasks and not self._fits(tasks, job):
                        break
                    queue.popleft()
                    ctx = SearchEngine(engine, job.rows)
                    tasks.append(_Task(index, job, ctx, job.search(ctx)))
                self.in_flight = len(tasks)
                if not tasks:
                    continue  # every queued job was refused at admission
                done = self._advance(tasks)
                if done:
                    for t in done:
                        tasks.remove(t)
                        yield self._finish(t)
                    continue  # admit the next problems before the next forward
                if not self._step(tasks):
                    self._break_deadlock(tasks)
        finally:
            for t in tasks:
                t.coro.close()
                t.ctx.close()
            self.in_flight = 0

    def _never_fits(self, job: Job) -> CapacityError | None:
        engine = self.engine
        if job.rows > engine.max_rows:
            return CapacityError(f"max_rows={engine.max_rows} exceeded: this search declares a peak of {job.rows} rows")
        need = job.rows * job.cols * engine.cell_bytes
        if engine.max_kv_bytes is not None and need > engine.max_kv_bytes:
            return CapacityError(f"max_kv_bytes={engine.max_kv_bytes} exceeded: this search declares a peak of "
                                 f"{job.rows} rows x {job.cols} tokens = {need} bytes")
        return None

    def _fits(self, tasks: list[_Task], job: Job) -> bool:
        """Whether `job` fits beside the searches in flight: their declared peak rows and its own
        within the free rows (rows held outside the scheduler, e.g. a shared judge prefix, are not
        for the searches) and, under `max_kv_bytes`, rows x the longest declared branch too."""
        engine = self.engine
        rows = sum(t.job.rows for t in tasks) + job.rows
        if rows > engine.free_rows + sum(t.ctx.rows - t.ctx.rows_left for t in tasks):
            return False
        if engine.max_kv_bytes is None:
            return True
        cols = max([t.job.cols for t in tasks] + [job.cols, engine._min_cols()])
        outside = engine.held_rows - sum(t.ctx.rows - t.ctx.rows_left for t in tasks)
        return (rows + outside) * cols * engine.cell_bytes \
            <= engine.max_kv_bytes

    # ------------------------------------------------------------------ driving the searches

    def _advance(self, tasks: list[_Task]) -> list[_Task]:
        """Run every ready search until it waits on a forward, a decode or rows. Returns the
        searches that ended."""
        done = []
        progress = True
        while progress:
            progress = False
            for t in tasks:
                if t in done:
                    continue
                if not t.ready and isinstance(t.waiting, _Rows):
                    self._try_rows(t)
                if not t.ready:
                    continue
                progress = True
                t.ready = False
                try:
                    if t.throw is not None:
                        err, t.throw = t.throw, None
                        req = t.coro.throw(err)
                    else:
                        value, t.send = t.send, None
                        req = t.coro.send(value)
                except StopIteration as stop:
                    t.send, t.waiting = stop.value, None
                    done.append(t)
                    continue
                except Exception as err:  # a fault ends this search only
                    t.throw, t.waiting = err, None
                    done.append(t)
                    continue
                t.waiting = req
                if isinstance(req, _Rows):
                    self._try_rows(t)
        return done

    def _try_rows(self, t: _Task) -> None:
        req = t.waiting
        if self.engine.free_rows < req.n:
            return
        if req.branch is None and any(self._waits_for_prefix(ids) for ids in req.prompts):
            return
        try:
            if req.branch is None:
                roots, rests = self.engine._new_roots(req.prompts, req.seeds)
                t.ctx.owned.extend(roots)
                t.ctx.stats.tokens_reused += sum(len(p) - len(r) for p, r in zip(req.prompts, rests))
                todo = [(b, r) for b, r in zip(roots, rests) if r]  # none: the cache held every prompt
                if todo:
                    t.waiting = _Forward([b for b, _ in todo], [r for _, r in todo], result=roots,
                                         roots=roots if req.remember else ())
                    return
                t.send = roots
            else:
                kids = self.engine.fork(req.branch, req.n)
                t.ctx.owned.extend(kids)
                t.ctx.stats.rows_copied += len(kids)
                t.send = kids
        except Exception as err:
            t.throw = err
        t.waiting, t.ready = None, True

    def _waits_for_prefix(self, ids: list[int]) -> bool:
        """Whether a new prompt should wait one step: a root being prefilled in this step shares a
        longer prefix with it than the prefix cache holds (after that step the cache has it)."""
        cache = self.engine.prefix_cache
        if not cache.capacity:
            return False
        have = cache.match_prefix(ids)[1]
        for t in self._tasks:
            w = t.waiting
            if isinstance(w, _Forward) and w.roots:
                for b, x in zip(w.branches, w.ids):
                    n = common_prefix(b.tokens + x, ids)
                    if n >= cache.min_tokens and n > have:
                        return True
        return False

    def _step(self, tasks: list[_Task]) -> bool:
        """One shared step: sample every decoding row, forward every pending token. False if there
        was nothing to do."""
        decoding = [(t, r) for t in tasks if isinstance(t.waiting, _Decode) for r in t.waiting.rows
                    if r.stop_reason is None]
        forwards = [t for t in tasks if isinstance(t.waiting, _Forward)]
        if not decoding and not forwards:
            return False
        items: list[tuple[_Task, Branch, list[int], list | None]] = []
        if decoding:
            try:
                step = self.engine.sample_step([r for _, r in decoding])
            except Exception as err:
                for t in {id(t): t for t, _ in decoding}.values():
                    self._fail(t, err)
                step = []
            owner = {id(r): t for t, r in decoding}
            items += [(owner[id(r)], r.branch, [tok], [lp]) for r, tok, lp in step if owner[id(r)].throw is None]
        for t in forwards:
            items += [(t, b, x, None) for b, x in zip(t.waiting.branches, t.waiting.ids)]
        for group in (
            [it for it in items if len(it[2]) == 1],
            [it for it in items if len(it[2]) > 1],
        ):
            if group:
                self._forward(group)
        for t in tasks:
            if t.throw is not None or t.ready:
                continue
            if isinstance(t.waiting, _Forward):
                for root in t.waiting.roots:
                    self.engine._remember_prompt(root)
                t.send, t.waiting, t.ready = t.waiting.result, None, True
            elif isinstance(t.waiting, _Decode) and all(r.stop_reason is not None for r in t.waiting.rows):
                t.send, t.waiting, t.ready = [r.result() for r in t.waiting.rows], None, True
        return True

    def _forward(self, group: list[tuple[_Task, Branch, list[int], list | None]]) -> None:
        lps = [lp if lp is not None else [None] * len(x) for _, _, x, lp in group]
        try:
            self.engine._forward([b for _, b, _, _ in group], [x for _, _, x, _ in group], lps)
        except Exception as err:  # e.g. max_kv_bytes: every search in the call gets it
            for t in {id(t): t for t, *_ in group}.values():
                self._fail(t, err)
            return
        for t in {id(t): t for t, *_ in group}.values():
            t.ctx.stats.forward_calls += 1
        for t, _, x, _ in group:
            t.ctx.stats.tokens_forwarded += len(x)

    def _fail(self, t: _Task, err: BaseException) -> None:
        t.throw, t.waiting, t.ready = err, None, True

    def _break_deadlock(self, tasks: list[_Task]) -> None:
        waiting = [t for t in tasks if isinstance(t.waiting, _Rows)]
        if not waiting:
            raise RuntimeError("scheduler: no search can move and none waits for rows")  # a bug, never expected
        t = waiting[-1]
        self._fail(t, CapacityError(
            f"max_rows={self.engine.max_rows} exceeded: this search needs {t.waiting.n} more rows "
            f"({self.engine.free_rows} free) and every other search in flight waits for rows too"))

    def _finish(self, t: _Task) -> Finished:
        t.ctx.close()
        return Finished(t.index, t.send if t.throw is None else None, t.throw, time.perf_counter() - t.t0, t.ctx.stats)


def run_one(engine: Engine, search: Callable[[SearchEngine], Awaitable[Any]], rows: int | None = None) -> Any:
    """Run one search (`search(ctx)` returns its coroutine) on `engine` to the end and return its
    value (its exception is raised). `rows`: its row budget (default: every free row)."""
    [f] = Scheduler(engine).run([Job(search, engine.free_rows if rows is None else rows)])
    if f.error is not None:
        raise f.error
    return f.result
