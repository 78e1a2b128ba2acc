"""The search loop of RAIN on the engine (`RainSearch`): one prompt's tree and its engine branches.

The tree (`tree.RainTree`) decides; this module decodes. It keeps the committed prefix and cached
node states as engine branches, evicts and rebuilds them (`materialize`: fork a live descendant and
rewind, or fork the nearest live ancestor and extend), decodes each expansion's K candidates and the
rollout in one batch, rewinds the rollout, asks the evaluator, embeds the rollout texts and hands
values to the tree's backup. Randomness comes from generators seeded from each node's position in
the tree, so results do not depend on caching or batching.
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
        root.branch = root_branch
        self.tree = RainTree(s, root)
        self.committed: list[int] = list(root_branch.tokens)
        self.clock = 0
        self.done: str | None = None
        self.total_searches = 0
        self.counters = dict(rewinds=0, rewound_tokens=0, evaluations=0, add_attempts=0, children_added=0,
                             materialized_tokens=0, materialized_by_rewind=0, evicted=0, rollout_tokens=0)
        self.reserve = judge_rows(evaluator)
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

    # ------------------------------------------------------------------ branch pool

    def _live_nodes(self) -> list[RainNode]:
        return [n for n in self.root.walk() if n.branch is not None]

    def _make_room(self, k: int, needed: Sequence[RainNode], pinned: Sequence[RainNode] = ()) -> None:
        """Evict cached node branches until `k` more rows (plus the evaluator's reserve) fit. The
        branches of `needed` nodes (and the root) are used next and never evicted; those of `pinned`
        nodes (the current path) are kept while other branches can go, and evicted only when rows
        run out (a path node's branch can be rebuilt from an ancestor)."""
        limit = self.settings.max_cached_branches
        hard = {id(n) for n in needed} | {id(self.root)}
        soft = hard | {id(p) for p in pinned}
        while True:
            live = self._live_nodes()
            rows_free = self.engine.rows_left
            if rows_free >= k + self.reserve and len(live) + k <= max(limit, k + 2):
                return
            cand = [n for n in live if id(n) not in soft]
            if not cand and rows_free < k + self.reserve:
                cand = [n for n in live if id(n) not in hard]
            if not cand:
                if rows_free >= k + self.reserve:
                    return
                raise CapacityError(f"RAIN needs {k + self.reserve} free engine rows and has {rows_free}")
            # Expanded nodes first (a descendant can rebuild them with fork + rewind), then least recent.
            victim = min(cand, key=lambda n: (not n.expanded, n.last_used))
            self.engine.release(victim.branch)
            victim.branch = None
            self.counters["evicted"] += 1

    def _rewind(self, branch: Branch, n: int) -> None:
        if n:
            self.engine.rewind(branch, n)
            self.counters["rewinds"] += 1
            self.counters["rewound_tokens"] += n

    async def materialize(self, node: RainNode, pinned: Sequence[RainNode] = ()) -> Branch:
        """A live branch whose tokens are exactly `node`'s sequence."""
        if node.branch is not None:
            self._touch(node)
            return node.branch
        src = next((d for d in node.walk() if d is not node and d.branch is not None), None)
        if src is not None:
            self._make_room(1, [src], [*pinned, node])
            b = (await self.engine.fork(src.branch, 1))[0]
            self._rewind(b, src.seq_len - node.seq_len)
            self.counters["materialized_by_rewind"] += 1
        else:
            anc = node.parent
            while anc.branch is None:
                anc = anc.parent
            self._make_room(1, [anc], [*pinned, node])
            b = (await self.engine.fork(anc.branch, 1))[0]
            ids = self._path_tokens(anc, node)
            if ids:
                await self.engine.extend([b], [ids])
                self.counters["materialized_tokens"] += len(ids)
        node.branch = b
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
        dropped or terminal candidate is released, the others become the children's branches."""
        cands = [Candidate(r.out, r.kind, r.logp, r.stop, r.limit) for r in rows]
        for r, child in zip(rows, self.tree.add_candidates(parent, cands)):
            if child is None or child.terminal:
                self.engine.release(r.branch)
            else:
                child.branch = r.branch
                self._touch(child)

    def _top_children(self, parent: RainNode, logits: torch.Tensor, count: int) -> int:
        strings = self.settings.stop.strings
        resp = self.response_tokens(parent) if strings else []
        return self.tree.add_top_tokens(parent, logits, count, self.eos,
                                        lambda t: bool(strings) and self.settings.stop.hit(self.tok, resp + [t]))

    async def _maybe_add_child(self, node: RainNode, pinned: list[RainNode]) -> None:
        """Dynamic node addition (`RainTree.wants_child`): the next-best token for 1-token sets, a
        new sample otherwise, up to `max_children` children."""
        if self.embedder is None or not self.tree.wants_child(node):
            return
        expand = self._expand_len(node)
        if expand <= 0:
            return
        self.counters["add_attempts"] += 1
        kids = node.children
        branch = await self.materialize(node, pinned)
        before = len(kids)
        if expand == 1:
            self._top_children(node, self.engine.logits([branch])[0], 1)
        else:
            self._make_room(1, [node], pinned)
            fork = (await self.engine.fork(branch, 1))[0]
            row = _Row(fork, "sample", expand, derive_seed(node.seed, _ADD + node.added))
            await self._decode_rows([row], self.response_tokens(node))
            self._children_from_rows(node, [row])
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
            await self._maybe_add_child(node, path)
            node = self.select(node)
            path.append(node)
        leaf = node
        if leaf.terminal is None and self._expand_len(leaf) <= 0:
            leaf.terminal = StopReason.LENGTH if leaf.seq_len - self.prompt_len >= s.max_tokens else StopReason.CONTEXT
        resp = self.response_tokens(leaf)
        rollout: list[int] = []
        if leaf.terminal is None:
            branch = await self.materialize(leaf, path)
            expand = self._expand_len(leaf)
            rows: list[_Row] = []
            top_logits = None
            if expand == 1:
                top_logits = engine.logits([branch])[0]  # read before the rollout moves the branch
            else:
                self._make_room(s.num_candidates, [leaf], path)
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
        """Move the root to its most-visited child, keep that subtree, release everything else."""
        old = self.root
        new = self.most_visited()
        if new is None:
            raise RuntimeError("commit() needs a root with children; run a search first")
        if new.terminal is None:
            if new.branch is None and not any(d.branch is not None for d in new.walk()):
                # Nothing below is cached: grow the committed branch in place instead of forking it.
                await self.engine.extend([old.branch], [list(new.tokens)])
                self.counters["materialized_tokens"] += len(new.tokens)
                new.branch, old.branch = old.branch, None
            else:
                await self.materialize(new, [new])
        keep = {id(n) for n in new.walk()}
        for n in old.walk():
            if id(n) not in keep and n.branch is not None:
                self.engine.release(n.branch)
                n.branch = None
        self.tree.reroot(new)
        self.committed.extend(new.tokens)
        self._check_done(new)
        return new

    def close(self) -> None:
        """Release every branch the tree holds (the committed one included)."""
        for n in self.root.walk():
            if n.branch is not None and not n.branch.released:
                self.engine.release(n.branch)
            n.branch = None

    def children_summary(self, node: RainNode | None = None) -> list[dict]:
        node = node or self.root
        return [{"tokens": list(c.tokens), "text": self.tok.decode(list(c.tokens), skip_special_tokens=True),
                 "visits": c.visits, "n": round(c.n, 6), "q": round(c.q, 6), "prior": round(c.prior, 6),
                 "terminal": c.terminal} for c in node.children]
