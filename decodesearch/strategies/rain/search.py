"""The search loop of RAIN on the engine (`RainSearch`): one prompt's tree and its engine states.

The tree (`tree.RainTree`) decides; this module decodes. Node states live in the engine's prefix
cache, pinned by the search (`release(branch, cache=True, pin=True)`), at most
`max_cached_branches` of them; a node in use is `materialize`d by a prefill the cache serves (its
own state or a descendant's: a row copy and nothing forwarded; else the nearest ancestor's, and
the missing tokens are forwarded). When rows run short, or past that bound, pins are dropped,
expanded nodes first (a descendant's state serves them), then the least recently used. Each
expansion's K candidates and the rollout decode in one batch, the rollout is rewound, the evaluator
asked, the rollout texts embedded and the values handed to the tree's backup. Randomness comes from
generators seeded from each node's position in the tree, so results do not depend on caching or
batching.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from decodesearch.engine import GREEDY, Branch, Sampler, Stop, StopReason, derive_seed
from decodesearch.engine.engine import CapacityError
from decodesearch.engine.scheduler import SearchEngine
from decodesearch.scoring.judge import OPTIONAL_EVALUATOR_MEMBERS, Evaluator
from decodesearch.strategies.trace import Event, SearchEvent

from .settings import RainSettings
from .tree import Candidate, RainNode, RainTree, token_set_length

__all__ = ["RainSearch", "RainEvaluator", "OPTIONAL_EVALUATOR_MEMBERS", "judge_rows", "cut_after_last"]

# Seed streams of a node's generators (any distinct constants).
_EXPAND, _ROLLOUT, _ADD = 1 << 20, 2 << 20, 3 << 20


# What RAIN asks of its evaluator: `Evaluator` (required: `context_format`, `evaluate`); the
# optional members it uses when present are declared by `EvaluatorExtras`: `prepare`/`release`
# (by the strategy's session), `rows_needed` (row reserve), `stats` (trace), `context_tokens`
# (admission).
RainEvaluator = Evaluator


def judge_rows(evaluator: Any) -> int:
    """Rows the evaluator may hold at once during one evaluation (its `rows_needed`, 0 if it does not
    say), + 1."""
    return int(getattr(evaluator, "rows_needed", 0)) + 1


def cut_after_last(text: str, mark: str | None) -> str:
    """`text` up to and including the last `mark` (the whole text when `mark` is None or absent)."""
    if not mark:
        return text
    head, sep, _ = text.rpartition(mark)
    return head + sep if sep else text


class _Row:
    """One row of a batched decode: a branch, how it picks tokens (`kind`: greedy, sample or
    rollout), its token budget and generator seed; then what it decoded (`out`, the prior's
    log-probability `logp`, `stop`)."""

    __slots__ = ("branch", "kind", "limit", "seed", "out", "logp", "stop")

    def __init__(self, branch: Branch, kind: str, limit: int, seed: int):
        self.branch, self.kind, self.limit, self.seed = branch, kind, limit, seed
        self.out: list[int] = []
        self.logp = 0.0
        self.stop: str | None = None


class RainSearch:
    """The search state for one prompt: the tree above the committed prefix and its engine branches.

    `settings`: a `RainSettings` (or a `RAIN`, whose settings are taken). `root_branch` is the
    prefilled prompt; it becomes the committed branch (owned by the search). Use `search_once()` for
    one inner-loop iteration, `run_inner_loop()` for the stopping rule, `commit()` to move the root,
    `close()` to release every branch it holds.
    """

    def __init__(self, settings, engine: SearchEngine, root_branch: Branch, prompt: str, evaluator, embedder):
        settings = getattr(settings, "settings", settings)
        if not isinstance(settings, RainSettings):
            raise ValueError(f"settings={settings!r}; accepted: a RainSettings or a RAIN")
        self.settings = s = settings
        self.engine = engine
        self.tok = engine.tokenizer
        self.prompt = prompt
        self.evaluator = evaluator
        self.embedder = embedder
        self.prompt_len = root_branch.prompt_len
        self.eos = s.stop.eos_ids if s.stop.eos_ids is not None else engine.eos_ids
        self.rollout_stop = Stop(eos_ids=self.eos, boundaries=s.boundaries)  # a rollout ends a clause
        root = RainNode(None, (), 1.0, step=0, seq_len=root_branch.length, seed=root_branch.seed)
        self.tree = RainTree(s, root)
        self.committed: list[int] = list(root_branch.tokens)
        self.clock = 0
        self.done: str | None = None
        self.total_searches = 0
        self.counters = dict(rewinds=0, rewound_tokens=0, evaluations=0, add_attempts=0, children_added=0,
                             materialized=0, materialized_whole=0, materialized_tokens=0, evicted=0,
                             rollout_tokens=0)
        self.reserve = judge_rows(evaluator)
        self._keep(root, root_branch)
        self._check_done(root)

    # ------------------------------------------------------------------ tree views

    @property
    def root(self) -> RainNode:
        return self.tree.root

    @property
    def q_min(self) -> float:
        return self.tree.q_min

    @property
    def q_max(self) -> float:
        return self.tree.q_max

    def select(self, node: RainNode) -> RainNode:
        return self.tree.select(node)

    def most_visited(self, node: RainNode | None = None) -> RainNode | None:
        return self.tree.most_visited(node)

    # ------------------------------------------------------------------ helpers

    def _touch(self, node: RainNode) -> None:
        self.clock += 1
        node.last_used = self.clock

    def response_tokens(self, node: RainNode) -> list[int]:
        """Tokens after the prompt up to and including `node`'s set."""
        path = []
        while node is not None and node is not self.root:
            path.append(node.tokens)
            node = node.parent
        out = list(self.committed[self.prompt_len:])
        for t in reversed(path):
            out.extend(t)
        return out

    def _path_tokens(self, ancestor: RainNode, node: RainNode) -> list[int]:
        sets = []
        while node is not ancestor:
            sets.append(node.tokens)
            node = node.parent
        return [t for s in reversed(sets) for t in s]

    def _check_done(self, node: RainNode) -> None:
        resp = len(self.committed) - self.prompt_len
        if node.terminal:
            self.done = node.terminal
        elif resp >= self.settings.max_tokens:
            self.done = StopReason.LENGTH
        elif self.settings.stop.hit(self.tok, self.committed[self.prompt_len:]):  # response tokens only
            self.done = StopReason.STOP_STRING

    # ------------------------------------------------------------------ node states

    def full_tokens(self, node: RainNode) -> list[int]:
        """`node`'s whole sequence: the prompt, the committed response and the sets down to `node`."""
        return self.committed[: self.prompt_len] + self.response_tokens(node)

    def _keep(self, node: RainNode, branch: Branch) -> None:
        """Hand `branch` (holding exactly `node`'s sequence) to the engine's prefix cache, pinned for
        this search unless `node` holds a pin already; then drop pins past `max_cached_branches`."""
        if node.cached:
            self.engine.release(branch, cache=True)
        else:
            node.cached = self.engine.release(branch, cache=True, pin=True)
        self._touch(node)
        cached = [n for n in self.root.walk() if n.cached]
        for victim in self._eviction_order(cached, keep=[node])[: max(0, len(cached) - self.settings.max_cached_branches)]:
            self._unpin(victim)

    def _unpin(self, node: RainNode) -> None:
        self.engine.unpin(self.full_tokens(node))
        node.cached = False
        self.counters["evicted"] += 1

    @staticmethod
    def _eviction_order(nodes: Sequence[RainNode], keep: Sequence[RainNode] = ()) -> list[RainNode]:
        """Expanded nodes first (a descendant's state serves them), then the least recently used."""
        spared = {id(n) for n in keep}
        return sorted((n for n in nodes if id(n) not in spared), key=lambda n: (not n.expanded, n.last_used))

    def _make_room(self, k: int, keep: Sequence[RainNode] = ()) -> None:
        """Drop pins (never those of `keep`) until `k` more rows plus the evaluator's reserve fit
        within this search's rows."""
        need = k + self.reserve
        victims = iter(self._eviction_order([n for n in self.root.walk() if n.cached], keep))
        while self.engine.rows_left < need:
            victim = next(victims, None)
            if victim is None:
                raise CapacityError(f"RAIN needs {need} free engine rows and has {self.engine.rows_left}")
            self._unpin(victim)

    def _rewind(self, branch: Branch, n: int) -> None:
        if n:
            self.engine.rewind(branch, n)
            self.counters["rewinds"] += 1
            self.counters["rewound_tokens"] += n

    async def materialize(self, node: RainNode) -> Branch:
        """A live branch holding exactly `node`'s sequence (the caller hands it back with `_keep` or
        releases it): a prefill the engine's prefix cache serves as far as it can."""
        self._make_room(1, [node])
        ids = self.full_tokens(node)
        reused = self.engine.stats.tokens_reused
        b = await self.engine.prefill(ids, seed=node.seed, remember=False)
        forwarded = len(ids) - (self.engine.stats.tokens_reused - reused)
        self.counters["materialized"] += 1
        self.counters["materialized_whole"] += forwarded == 0
        self.counters["materialized_tokens"] += forwarded
        self._touch(node)
        return b

    # ------------------------------------------------------------------ batched decoding

    def _candidate_stop(self, resp: Sequence[int]) -> Stop:
        """EOS, or a stop string in the response (the tokens before the decode included as
        `preceding`, never the prompt)."""
        strings = self.settings.stop.strings
        tail = tuple(resp[-(max(map(len, strings)) + 2):]) if strings else ()
        return Stop(eos_ids=self.eos, strings=strings, preceding=tail)

    async def _decode_rows(self, rows: list[_Row], resp: Sequence[int]) -> None:
        """Decode every row in one batched engine decode (one forward per step). Candidate rows are
        scored under the expansion distribution (summed into `logp` for the prior) and they stop at
        a stop string of the response (never the prompt); the ``rollout`` row uses the rollout
        sampler and stops at a clause boundary (`rollout_to_end`: at EOS or a stop string, as a
        candidate). EOS is never appended."""
        if not rows:
            return
        s = self.settings
        candidate_stop = self._candidate_stop(resp)
        rollout_stop = candidate_stop if s.rollout_to_end else self.rollout_stop
        prior = Sampler(temperature=1.0) if s.sampler.greedy else s.sampler  # as `RAIN.prior_probs`
        samplers, stops, scorers = [], [], []
        for r in rows:
            r.branch.reseed(r.seed)
            rollout = r.kind == "rollout"
            samplers.append(s.rollout_sampler if rollout else GREEDY if r.kind == "greedy" else s.sampler)
            stops.append(rollout_stop if rollout else candidate_stop)
            scorers.append(None if rollout else prior)
        outs = await self.engine.decode([r.branch for r in rows], [r.limit for r in rows], samplers, stops, scorers)
        for r, out in zip(rows, outs):
            r.out, r.logp, r.stop = list(out), out.score, out.stop_reason

    def _rollout_limit(self, leaf: RainNode, resp: Sequence[int]) -> int:
        """Tokens the rollout from `leaf` may decode: `rollout_max_tokens` (None: no cap) within the
        response budget and the context; 0 when a clause rollout would start at a boundary."""
        s = self.settings
        room = min(s.max_tokens - len(resp), self.engine.max_context - leaf.seq_len - 1)
        if s.rollout_max_tokens is None:
            limit = room
        else:  # a clause rollout keeps its own cap (the engine stops it at the context's end)
            limit = min(s.rollout_max_tokens, room) if s.rollout_to_end else s.rollout_max_tokens
        if limit <= 0 or (not s.rollout_to_end and self.rollout_stop.hit(self.tok, resp)):
            return 0
        return limit

    # ------------------------------------------------------------------ tree operations

    def _expand_len(self, node: RainNode) -> int:
        room = self.settings.max_tokens - (node.seq_len - self.prompt_len)
        return max(0, min(token_set_length(node.step, self.settings.set_lengths), room,
                          self.engine.max_context - node.seq_len - 1))

    def _children_from_rows(self, parent: RainNode, rows: list[_Row]) -> None:
        """New children from decoded candidate rows (`RainTree.add_candidates`); the branch of a
        dropped or terminal candidate is released, the others are kept as the children's states."""
        cands = [Candidate(r.out, r.kind, r.logp, r.stop, r.limit) for r in rows]
        for r, child in zip(rows, self.tree.add_candidates(parent, cands)):
            if child is None or child.terminal:
                self.engine.release(r.branch)
            else:
                self._keep(child, r.branch)

    def _top_children(self, parent: RainNode, logits: torch.Tensor, count: int) -> int:
        strings = self.settings.stop.strings
        resp = self.response_tokens(parent) if strings else []
        return self.tree.add_top_tokens(parent, logits, count, self.eos,
                                        lambda t: bool(strings) and self.settings.stop.hit(self.tok, resp + [t]))

    async def _maybe_add_child(self, node: RainNode) -> None:
        """Dynamic node addition (`RainTree.wants_child`): the next-best token for 1-token sets, a
        new sample otherwise, up to `max_children` children."""
        if self.embedder is None or not self.tree.wants_child(node):
            return
        expand = self._expand_len(node)
        if expand <= 0:
            return
        self.counters["add_attempts"] += 1
        kids = node.children
        branch = await self.materialize(node)
        before = len(kids)
        if expand == 1:
            self._top_children(node, self.engine.logits([branch])[0], 1)
        else:
            self._make_room(1, [node])
            fork = (await self.engine.fork(branch, 1))[0]
            row = _Row(fork, "sample", expand, derive_seed(node.seed, _ADD + node.added))
            await self._decode_rows([row], self.response_tokens(node))
            self._children_from_rows(node, [row])
        self._keep(node, branch)
        node.added += 1
        self.counters["children_added"] += len(kids) - before

    def judged_text(self, tokens: Sequence[int]) -> str:
        """The text the evaluator judges for response `tokens`: `context_format` filled with the
        prompt and the decoded response (cut after its last `judge_cut`, when set)."""
        s = self.settings
        response = cut_after_last(self.tok.decode(list(tokens), skip_special_tokens=True), s.judge_cut)
        return s.context_format.replace("{prompt}", self.prompt).replace("{response}", response)

    async def search_once(self, trace: list[Event] | None = None) -> float:
        """One inner-loop iteration: select, roll out + expand in one batch, rewind, evaluate, back up.
        Returns the leaf's value."""
        s, engine = self.settings, self.engine
        node, path = self.root, [self.root]
        while node.children:
            await self._maybe_add_child(node)
            node = self.select(node)
            path.append(node)
        leaf = node
        if leaf.terminal is None and self._expand_len(leaf) <= 0:
            leaf.terminal = StopReason.LENGTH if leaf.seq_len - self.prompt_len >= s.max_tokens else StopReason.CONTEXT
        resp = self.response_tokens(leaf)
        rollout: list[int] = []
        if leaf.terminal is None:
            branch = await self.materialize(leaf)
            expand = self._expand_len(leaf)
            rows: list[_Row] = []
            top_logits = None
            if expand == 1:
                top_logits = engine.logits([branch])[0]  # read before the rollout moves the branch
            else:
                self._make_room(s.num_candidates, [leaf])
                forks = await engine.fork(branch, s.num_candidates)
                for j, f in enumerate(forks):
                    rows.append(_Row(f, "greedy" if j == 0 else "sample", expand, derive_seed(leaf.seed, _EXPAND + j)))
            limit = self._rollout_limit(leaf, resp)
            if limit > 0:
                rows.insert(0, _Row(branch, "rollout", limit, derive_seed(leaf.seed, _ROLLOUT + leaf.evals)))
            await self._decode_rows(rows, resp)
            if rows and rows[0].kind == "rollout":
                rollout = rows[0].out
                self.counters["rollout_tokens"] += len(rollout)
                self._rewind(branch, len(rollout))
                rows = rows[1:]
            if top_logits is not None:
                self._top_children(leaf, top_logits, s.num_candidates)
            else:
                self._children_from_rows(leaf, rows)
            leaf.expanded = True
            self._keep(leaf, branch)
        full = resp + rollout
        v = float((await self.evaluator.evaluate(engine, [self.judged_text(full)]))[0])
        self.counters["evaluations"] += 1
        self._backup(path, v, full)
        leaf.evals += 1
        self.total_searches += 1
        if trace is not None:
            trace.append(SearchEvent(search=self.total_searches, depth=len(path) - 1, leaf_tokens=list(leaf.tokens),
                                     rollout_tokens=len(rollout), value=v, terminal=leaf.terminal))
        return v

    def _backup(self, path: list[RainNode], v: float, full: list[int]) -> None:
        """Embed each path node's text (its token set through the end of the rollout) and back up."""
        embs: dict[int, torch.Tensor] = {}
        if self.embedder is not None and len(path) > 1:
            starts = [node.seq_len - len(node.tokens) - self.prompt_len for node in path[1:]]
            texts = [self.tok.decode(full[st:], skip_special_tokens=True) for st in starts]
            vecs = self.embedder.embed(texts)
            embs = {id(node): vecs[i] for i, node in enumerate(path[1:])}
        self.tree.backup(path, v, embs)

    async def run_inner_loop(self, trace: list[Event] | None = None) -> int:
        """Searches until the stopping rule holds; returns how many ran."""
        s = self.settings
        start = self.root.visits
        limit = max(s.max_visits, start + s.min_new_searches)
        ran = 0
        for _ in range(start, limit):
            await self.search_once(trace if s.trace_searches else None)
            ran += 1
            best = self.most_visited()
            if best is not None and best.visits > s.min_visits and best.q > s.value_threshold:
                break
        return ran

    async def commit(self) -> RainNode:
        """Move the root to its most-visited child, keep that subtree's states, drop the other pins."""
        old = self.root
        new = self.most_visited()
        if new is None:
            raise RuntimeError("commit() needs a root with children; run a search first")
        if new.terminal is None and not any(d.cached for d in new.walk()):
            self._keep(new, await self.materialize(new))  # from the old root's state, still pinned
        keep = {id(n) for n in new.walk()}
        for n in old.walk():
            if id(n) not in keep and n.cached:
                self.engine.unpin(self.full_tokens(n))
                n.cached = False
        self.tree.reroot(new)
        self.committed.extend(new.tokens)
        self._check_done(new)
        return new

    def close(self) -> None:
        """Drop every pin the tree holds (the committed state's included)."""
        for n in self.root.walk():
            if n.cached:
                self.engine.unpin(self.full_tokens(n))
                n.cached = False

    def children_summary(self, node: RainNode | None = None) -> list[dict]:
        node = node or self.root
        return [{"tokens": list(c.tokens), "text": self.tok.decode(list(c.tokens), skip_special_tokens=True),
                 "visits": c.visits, "n": round(c.n, 6), "q": round(c.q, 6), "prior": round(c.prior, 6),
                 "terminal": c.terminal} for c in node.children]
