"""RAIN: Rewindable Auto-regressive INference (Li et al., "RAIN: Your Language Models Can Align
Themselves without Finetuning", arXiv 2309.07124), on the branching engine.

Above the committed prefix the search grows a tree whose nodes are token sets. One search
(the paper's inner loop, one "forward + backward" pass):

1. Selection: from the root, repeatedly pick the child maximising
   ``q̂ + c·p·sqrt(n_parent)/(1 + n_child)`` (`selection_score`; c = 2; q̂ is q min-max normalised
   with the tree's running value bounds, 0 for an unvisited child; at the root the priors are mixed
   ``(1 − ε)·p + ε/K``, ε = 0.25, `mix_root_priors`). Before choosing at an internal node, dynamic
   node addition may add one child (see below).
2. At the leaf: roll out (sampling at T = 1) to the next clause boundary (``, . ? : ;`` newline, or
   EOS), self-evaluate the prompt + response + rollout with the evaluator (`SelfJudge`: the A/B
   judge asked in both option orders, ``v ∈ {−1, 0, 1}``; or any callable), then rewind the rollout.
3. Expansion (same step, same batch as the rollout): up to K = 10 children, the greedy token set
   plus unique samples (top-15, T = 1); the token-set length depends on the absolute depth of the
   node expanded: 1, 2, 4, then 10 tokens; for 1-token sets the top-K tokens. Priors = joint
   probabilities of the sets normalised over the siblings.
4. Backup along the path: ``n += 1, q += (v − q)/n`` (`backup`). Each path node's embedding is the
   running mean (over its visits) of the sentence embedding of the text from its token set to the
   end of the rollout; every sibling y with ``cos(e_x, e_y) > 0.95`` gets ``w = 0.2·cos``,
   ``q_y = (q_y·n_y + w·v)/(n_y + w)``, ``n_y += w`` (`similarity_update`).

Dynamic node addition (paper §3, official code): when all children of a node have embeddings,
the L2 norm of their per-dimension embedding variance is below ``0.03·(token-set length)`` and
every child's q is below 0, one more child is added (the next-best token for 1-token sets, a new
sample otherwise), up to 20 children.

Outer loop: run searches until the root's most-visited child has been visited more than T_m = 6
times with q > V = 0.8 (the official code's test), or the root has T = 50 visits, but always at least
15 new searches per commit; commit the most-visited child (ties by q), keep its subtree (its visits
count towards the next T), repeat until EOS, `max_tokens` or a stop string.

Engine use: the committed prefix and every node's state live as engine branches; expansion forks
the leaf K times and decodes all K candidates and the rollout in ONE batch (one forward per step);
the rollout is undone with `rewind`; a node whose branch was evicted is rebuilt by forking a live
descendant and rewinding (no forward) or, failing that, forking its nearest live ancestor and
extending the missing tokens. Randomness comes from generators seeded from each node's position in
the tree (derived from the root branch's seed), so results are deterministic by seed and do not
depend on how branches are cached or batched.

Priors: the greedy candidate's joint probability is clamped into [max + min, sum] of the sampled
candidates' joints before normalising, as the official code does (`clamp_greedy_prior=False` turns
it off). Differences from the official code, on purpose: a candidate that samples EOS ends there
(the official code keeps sampling after EOS), and its joint is extended to the set length by its
per-token geometric mean so shorter sets are not favoured; rollouts are capped at
`rollout_max_tokens`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from decodesearch.engine import GREEDY, Branch, Engine, Sampler, Stop, derive_seed
from decodesearch.engine.engine import CapacityError
from decodesearch.engine.scheduler import SearchEngine
from decodesearch.scoring.answers import extract_answer
from decodesearch.scoring.embeddings import EMBEDDERS, cosine, make_embedder
from decodesearch.scoring.judge import DEFAULT_CONTEXT_FORMAT, as_evaluator
from decodesearch.strategies.base import PromptFormat, Sample, SearchResult, Strategy, check_positive_int

__all__ = [
    "RAIN", "RainNode", "RainSearch", "selection_score", "mix_root_priors", "backup", "similarity_update",
    "token_set_length", "clamp_greedy", "DEFAULT_BOUNDARIES",
]

DEFAULT_BOUNDARIES = (",", ".", "?", ":", ";", "\n")
_NORM_EPS = 1e-5  # the official code's guard in (q - min) / (max - min + eps)

# Seed streams of a node's generators (any distinct constants).
_EXPAND, _ROLLOUT, _ADD = 1 << 20, 2 << 20, 3 << 20


# ---------------------------------------------------------------------------------------- formulas


def selection_score(q: float, n_child: float, prior: float, n_parent: float, c: float = 2.0,
                    q_min: float = -1.0, q_max: float = 1.0) -> float:
    """PUCT score of a child: ``q̂ + c·prior·sqrt(n_parent)/(1 + n_child)``, where
    ``q̂ = (q − q_min)/(q_max − q_min + 1e-5)`` for a visited child (``n_child > 0``) and 0 otherwise."""
    q_hat = (q - q_min) / (q_max - q_min + _NORM_EPS) if n_child > 0 else 0.0
    return q_hat + c * prior * math.sqrt(max(n_parent, 0.0)) / (1.0 + n_child)


def mix_root_priors(priors: Sequence[float], eps: float = 0.25) -> list[float]:
    """Root priors ``(1 − eps)·p + eps/K``, renormalised to sum to 1 (K = number of children)."""
    k = len(priors)
    if k == 0:
        return []
    mixed = [(1.0 - eps) * p + eps / k for p in priors]
    total = sum(mixed)
    return [m / total for m in mixed] if total > 0 else [1.0 / k] * k


def backup(q: float, n: float, v: float) -> tuple[float, float]:
    """One visit with value v: ``n' = n + 1``, ``q' = q + (v − q)/n'``. Returns (q', n')."""
    n = n + 1.0
    return q + (v - q) / n, n


def similarity_update(q: float, n: float, v: float, sim: float, weight: float = 0.2) -> tuple[float, float]:
    """A sibling's update from a similar node's value: ``w = weight·sim``,
    ``q' = (q·n + w·v)/(n + w)``, ``n' = n + w``. Returns (q', n')."""
    w = weight * sim
    if n + w <= 0:
        return q, n
    return (q * n + w * v) / (n + w), n + w


def clamp_greedy(greedy: float, sampled: Sequence[float]) -> float:
    """The greedy set's joint probability clamped into ``[max + min, sum]`` of the sampled sets'
    joints (official `HH/main.py`): without it a 10-token greedy set takes ~all of the prior mass and,
    below the root where priors are not mixed, nearly every visit."""
    return min(max(greedy, max(sampled) + min(sampled)), sum(sampled))


def token_set_length(step: int, lengths: Sequence[int] = (1, 2, 4, 10)) -> int:
    """Length of the token sets made by expanding a node at absolute depth `step` (0 = the first root)."""
    return int(lengths[min(step, len(lengths) - 1)])


# ---------------------------------------------------------------------------------------- tree


class RainNode:
    """A token set in the search tree. `n` counts visits plus similarity weight (a float); `visits`
    counts searches through the node (an int); `evals` counts searches that ended at it. `joint` is
    the set's joint probability under the expansion distribution, `prior` it normalised over the
    siblings. `seq_len` is the length of the whole sequence (prompt included) ending with this set.
    `terminal` is None or why the sequence cannot grow (``"eos"``, ``"length"``, ``"stop_string"``,
    ``"context"``)."""

    __slots__ = ("parent", "tokens", "joint", "prior", "children", "n", "visits", "evals", "q", "embedding",
                 "step", "seq_len", "seed", "terminal", "branch", "last_used", "added", "expanded")

    def __init__(self, parent: "RainNode | None", tokens: Sequence[int], joint: float, step: int, seq_len: int,
                 seed: int, terminal: str | None = None):
        self.parent = parent
        self.tokens = tuple(tokens)
        self.joint = joint
        self.prior = 1.0
        self.children: list[RainNode] = []
        self.n = 0.0
        self.visits = 0
        self.evals = 0
        self.q = 0.0
        self.embedding: torch.Tensor | None = None
        self.step = step
        self.seq_len = seq_len
        self.seed = seed
        self.terminal = terminal
        self.branch: Branch | None = None
        self.last_used = 0
        self.added = 0
        self.expanded = False

    def walk(self):
        """This node and all its descendants, depth first."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def __repr__(self) -> str:
        return f"RainNode(tokens={list(self.tokens)}, n={self.n:.3g}, visits={self.visits}, q={self.q:.3g})"


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

    `root_branch` is the prefilled prompt; it becomes the committed branch (owned by the search).
    Use `search_once()` for one inner-loop iteration, `run_inner_loop()` for the stopping rule,
    `commit()` to move the root, `close()` to release every branch it holds.
    """

    def __init__(self, rain: "RAIN", engine: SearchEngine, root_branch: Branch, prompt: str, evaluator, embedder):
        self.rain = rain
        self.engine = engine
        self.tok = engine.tokenizer
        self.prompt = prompt
        self.evaluator = evaluator
        self.embedder = embedder
        self.prompt_len = root_branch.start
        self.eos = rain.stop.eos_ids if rain.stop.eos_ids is not None else engine.eos_ids
        self.rollout_stop = Stop(eos_ids=self.eos, boundaries=rain.boundaries)  # a rollout ends a clause
        self.root = RainNode(None, (), 1.0, step=0, seq_len=root_branch.length, seed=root_branch.seed)
        self.root.branch = root_branch
        self.committed: list[int] = list(root_branch.tokens)
        self.q_min, self.q_max = rain.value_bounds
        self.clock = 0
        self.done: str | None = None
        self.total_searches = 0
        self.counters = dict(rewinds=0, rewound_tokens=0, evaluations=0, add_attempts=0, children_added=0,
                             materialized_tokens=0, materialized_by_rewind=0, evicted=0, rollout_tokens=0)
        self.reserve = rain.judge_rows()
        self._check_done(self.root)

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
        elif resp >= self.rain.max_tokens:
            self.done = "length"
        elif self.rain.stop.hit(self.tok, self.committed[self.prompt_len:]):  # response tokens only
            self.done = "stop_string"

    # ------------------------------------------------------------------ branch pool

    def _live_nodes(self) -> list[RainNode]:
        return [n for n in self.root.walk() if n.branch is not None]

    def _make_room(self, k: int, pinned: Sequence[RainNode]) -> None:
        """Evict cached node branches until `k` more rows (plus the evaluator's reserve) fit."""
        limit = self.rain.max_cached_branches
        while True:
            live = self._live_nodes()
            rows_free = self.engine.rows_left
            if rows_free >= k + self.reserve and len(live) + k <= max(limit, k + 2):
                return
            pins = {id(p) for p in pinned} | {id(self.root)}
            cand = [n for n in live if id(n) not in pins]
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
            self._make_room(1, [*pinned, node, src])
            b = (await self.engine.fork(src.branch, 1))[0]
            self._rewind(b, src.seq_len - node.seq_len)
            self.counters["materialized_by_rewind"] += 1
        else:
            anc = node.parent
            while anc.branch is None:
                anc = anc.parent
            self._make_room(1, [*pinned, node, anc])
            b = (await self.engine.fork(anc.branch, 1))[0]
            ids = self._path_tokens(anc, node)
            if ids:
                await self.engine.extend([b], [ids])
                self.counters["materialized_tokens"] += len(ids)
        node.branch = b
        self._touch(node)
        return b

    # ------------------------------------------------------------------ batched decoding

    async def _decode_rows(self, rows: list[_Row], resp: Sequence[int]) -> None:
        """Decode all rows in the engine's shared steps (with every other search in flight).
        ``greedy`` / ``sample`` rows are candidate sets after the response `resp`: their picks are
        scored under the expansion distribution (summed into `logp` for the prior) and they stop at
        a stop string of the response (never the prompt); the ``rollout`` row uses the rollout
        sampler and stops at a clause boundary. EOS is never appended."""
        if not rows:
            return
        rain = self.rain
        strings = rain.stop.strings
        tail = tuple(resp[-(max(map(len, strings)) + 2):]) if strings else ()
        candidate_stop = Stop(eos_ids=self.eos, strings=strings, preceding=tail)
        prior = Sampler(temperature=1.0) if rain.sampler.greedy else rain.sampler  # as `prior_probs`
        samplers, stops, scorers = [], [], []
        for r in rows:
            r.branch.reseed(r.seed)
            rollout = r.kind == "rollout"
            samplers.append(rain.rollout_sampler if rollout else GREEDY if r.kind == "greedy" else rain.sampler)
            stops.append(self.rollout_stop if rollout else candidate_stop)
            scorers.append(None if rollout else prior)
        outs = await self.engine.decode([r.branch for r in rows], [r.limit for r in rows], samplers, stops, scorers)
        for r, out in zip(rows, outs):
            r.out, r.logp, r.stop = list(out), out.score, out.stop_reason

    # ------------------------------------------------------------------ tree operations

    def _set_priors(self, node: RainNode) -> None:
        total = sum(c.joint for c in node.children)
        k = len(node.children)
        for c in node.children:
            c.prior = c.joint / total if total > 0 else 1.0 / k

    def _priors_for_selection(self, node: RainNode) -> list[float]:
        priors = [c.prior for c in node.children]
        return mix_root_priors(priors, self.rain.root_prior_mix) if node is self.root else priors

    def select(self, node: RainNode) -> RainNode:
        """The child of `node` with the highest `selection_score` (first on ties)."""
        priors = self._priors_for_selection(node)
        best, best_s = None, -math.inf
        for c, p in zip(node.children, priors):
            s = selection_score(c.q, c.n, p, node.n, self.rain.c_puct, self.q_min, self.q_max)
            if s > best_s:
                best, best_s = c, s
        return best

    def most_visited(self, node: RainNode | None = None) -> RainNode | None:
        """The child of `node` (default: the root) with the most visits `n`, ties broken by q."""
        node = node or self.root
        if not node.children:
            return None
        return max(node.children, key=lambda c: (c.n, c.q))

    def _expand_len(self, node: RainNode) -> int:
        room = self.rain.max_tokens - (node.seq_len - self.prompt_len)
        return max(0, min(token_set_length(node.step, self.rain.set_lengths), room,
                          self.engine.max_context - node.seq_len - 1))

    def _new_child(self, parent: RainNode, tokens: Sequence[int], joint: float, index: int,
                   terminal: str | None) -> RainNode:
        child = RainNode(parent, tokens, joint, parent.step + 1, parent.seq_len + len(tokens),
                         derive_seed(parent.seed, index), terminal)
        parent.children.append(child)
        return child

    def _children_from_rows(self, parent: RainNode, rows: list[_Row]) -> None:
        """New children from decoded candidate rows (duplicates and empty sets dropped). A set that
        ended at EOS after m of L tokens gets the joint ``exp(logp · L / m)`` (its per-token geometric
        mean over L tokens, EOS counted), so a shorter set is not favoured by having fewer factors.
        With `clamp_greedy_prior`, the greedy set's joint is clamped into ``[max + min, sum]`` of the
        sampled sets' joints, as the official code does before normalising (`clamp_greedy`)."""
        seen = {(c.tokens, c.terminal == "eos") for c in parent.children}
        made: list[tuple[RainNode, str]] = []
        for r in rows:
            key = (tuple(r.out), r.stop == "eos")
            terminal = {"eos": "eos", "stop_string": "stop_string", "context": "context"}.get(r.stop)
            if key in seen or (not r.out and r.stop != "eos"):
                self.engine.release(r.branch)
                continue
            seen.add(key)
            steps = len(r.out) + (r.stop == "eos")
            logp = r.logp * r.limit / steps if r.stop == "eos" and steps < r.limit else r.logp
            child = self._new_child(parent, r.out, math.exp(logp), len(parent.children), terminal)
            made.append((child, r.kind))
            if terminal:
                self.engine.release(r.branch)
            else:
                child.branch = r.branch
                self._touch(child)
        sampled = [c.joint for c, kind in made if kind == "sample"]
        if self.rain.clamp_greedy_prior and sampled:
            for c, kind in made:
                if kind == "greedy":
                    c.joint = clamp_greedy(c.joint, sampled)
        self._set_priors(parent)

    def _top_children(self, parent: RainNode, logits: torch.Tensor, count: int) -> int:
        """Add up to `count` new 1-token children, best first, skipping existing ones. Returns how many."""
        # The official code ranks 1-token sets by the unfiltered distribution (T = 1); priors are
        # these probabilities renormalised over the siblings (`_set_priors`).
        temp = self.rain.sampler.temperature or 1.0
        probs = torch.softmax(logits.float() / temp, dim=-1)
        order = torch.argsort(probs, descending=True).tolist()
        have = {c.tokens for c in parent.children}
        resp = self.response_tokens(parent) if self.rain.stop.strings else []
        if any(c.terminal == "eos" for c in parent.children):
            have.add(())
        added = 0
        for t in order:
            if added >= count or probs[t] <= 0:
                break
            tokens = () if t in self.eos else (t,)
            if tokens in have:
                continue
            have.add(tokens)
            terminal = "eos" if t in self.eos else None
            if terminal is None and self.rain.stop.hit(self.tok, resp + [t]):
                terminal = "stop_string"
            self._new_child(parent, tokens, float(probs[t]), len(parent.children), terminal)
            added += 1
        self._set_priors(parent)
        return added

    async def _maybe_add_child(self, node: RainNode, pinned: list[RainNode]) -> None:
        """Dynamic node addition (see the module docstring)."""
        rain = self.rain
        kids = node.children
        if self.embedder is None or len(kids) >= rain.max_children or len(kids) < 2:
            return
        if any(c.embedding is None for c in kids):
            return
        length = token_set_length(node.step, rain.set_lengths)
        spread = float(torch.var(torch.stack([c.embedding for c in kids]), dim=0).norm())
        if not (spread < rain.add_variance_factor * length and max(c.q for c in kids) < rain.add_value_threshold):
            return
        expand = self._expand_len(node)
        if expand <= 0:
            return
        self.counters["add_attempts"] += 1
        branch = await self.materialize(node, pinned)
        before = len(kids)
        if expand == 1:
            self._top_children(node, self.engine.logits([branch])[0], 1)
        else:
            self._make_room(1, [*pinned, node])
            fork = (await self.engine.fork(branch, 1))[0]
            row = _Row(fork, "sample", expand, derive_seed(node.seed, _ADD + node.added))
            await self._decode_rows([row], self.response_tokens(node))
            self._children_from_rows(node, [row])
        node.added += 1
        self.counters["children_added"] += len(kids) - before

    async def search_once(self, trace: list | None = None) -> float:
        """One inner-loop iteration: select, roll out + expand in one batch, rewind, evaluate, back up.
        Returns the leaf's value."""
        rain, engine = self.rain, self.engine
        node, path = self.root, [self.root]
        while node.children:
            await self._maybe_add_child(node, path)
            node = self.select(node)
            path.append(node)
        leaf = node
        if leaf.terminal is None and self._expand_len(leaf) <= 0:
            leaf.terminal = "length" if leaf.seq_len - self.prompt_len >= rain.max_tokens else "context"
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
                self._make_room(rain.num_candidates, path)
                forks = await engine.fork(branch, rain.num_candidates)
                for j, f in enumerate(forks):
                    rows.append(_Row(f, "greedy" if j == 0 else "sample", expand, derive_seed(leaf.seed, _EXPAND + j)))
            if rain.rollout_max_tokens > 0 and not self.rollout_stop.hit(self.tok, resp):
                rows.insert(0, _Row(branch, "rollout", rain.rollout_max_tokens,
                                    derive_seed(leaf.seed, _ROLLOUT + leaf.evals)))
            await self._decode_rows(rows, resp)
            if rows and rows[0].kind == "rollout":
                rollout = rows[0].out
                self.counters["rollout_tokens"] += len(rollout)
                self._rewind(branch, len(rollout))
                rows = rows[1:]
            if top_logits is not None:
                self._top_children(leaf, top_logits, rain.num_candidates)
            else:
                self._children_from_rows(leaf, rows)
            leaf.expanded = True
        full = resp + rollout
        text = self.rain.context_format.replace("{prompt}", self.prompt).replace(
            "{response}", self.tok.decode(full, skip_special_tokens=True))
        v = float((await self.evaluator.evaluate(engine, [text]))[0])
        self.counters["evaluations"] += 1
        self._backup(path, v, full)
        leaf.evals += 1
        self.total_searches += 1
        if trace is not None:
            trace.append({"event": "search", "search": self.total_searches, "depth": len(path) - 1,
                          "leaf_tokens": list(leaf.tokens), "rollout_tokens": len(rollout), "value": v,
                          "terminal": leaf.terminal})
        return v

    def _backup(self, path: list[RainNode], v: float, full: list[int]) -> None:
        rain = self.rain
        embs: dict[int, torch.Tensor] = {}
        if self.embedder is not None and len(path) > 1:
            # Embedding text of a path node: its token set through the end of the rollout.
            starts = [node.seq_len - len(node.tokens) - self.prompt_len for node in path[1:]]
            texts = [self.tok.decode(full[s:], skip_special_tokens=True) for s in starts]
            vecs = self.embedder.embed(texts)
            embs = {id(node): vecs[i] for i, node in enumerate(path[1:])}
        for node in reversed(path):
            node.visits += 1
            node.q, node.n = backup(node.q, node.n, v)
            if node is not self.root:
                e = embs.get(id(node))
                if e is not None:
                    node.embedding = e.clone() if node.embedding is None else \
                        node.embedding + (e - node.embedding) / node.visits
                    for sib in node.parent.children:
                        if sib is node or sib.embedding is None:
                            continue
                        sim = cosine(node.embedding, sib.embedding)
                        if sim > rain.similarity_threshold:
                            sib.q, sib.n = similarity_update(sib.q, sib.n, v, sim, rain.similarity_weight)
                            self._bounds(sib.q)
                self._bounds(node.q)

    def _bounds(self, q: float) -> None:
        self.q_min = min(self.q_min, q)
        self.q_max = max(self.q_max, q)

    async def run_inner_loop(self, trace: list | None = None) -> int:
        """Searches until the stopping rule holds; returns how many ran."""
        rain = self.rain
        start = self.root.visits
        limit = max(rain.max_visits, start + rain.min_new_searches)
        ran = 0
        for _ in range(start, limit):
            await self.search_once(trace if rain.trace_searches else None)
            ran += 1
            best = self.most_visited()
            if best is not None and best.visits > rain.min_visits and best.q > rain.value_threshold:
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
        new.parent = None
        old.children = []
        self.root = new
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


# ---------------------------------------------------------------------------------------- strategy


def _check_range(name: str, value, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= value <= hi) or value != value:
        raise ValueError(f"{name}={value!r} is out of range; accepted: [{lo}, {hi}]")


class RAIN(Strategy):
    """RAIN search (see the module docstring). Every constant of the paper is a knob with the paper's
    (official code's) default:

    - `num_candidates` K = 10 children per expansion; `set_lengths` (1, 2, 4, 10) token-set lengths
      by depth; `sampler` the expansion distribution (top-15, T = 1), its greedy token set first;
      `clamp_greedy_prior` (on, as the official code) clamps the greedy set's joint probability.
    - `c_puct` c = 2; `root_prior_mix` ε = 0.25; `value_bounds` (-1, 1): the initial min/max of q̂'s
      normalisation (they widen if a q leaves them).
    - `similarity_threshold` 0.95, `similarity_weight` 0.2; `embedder` ``"auto"``/``"minilm"``
      (all-MiniLM-L6-v2; an error saying how to install it when missing), ``"lm"`` (opt-in: the LM's
      mean hidden state, on which the thresholds mean little), an object with ``embed(texts)``, or
      None (no similarity update, no dynamic addition).
    - `add_variance_factor` 0.03, `add_value_threshold` 0.0, `max_children` 20 (dynamic addition).
    - `min_visits` T_m = 6, `value_threshold` V = 0.8, `max_visits` T = 50, `min_new_searches` 15.
    - `boundaries` ``, . ? : ;`` newline; `rollout_sampler` (T = 1, unfiltered);
      `rollout_max_tokens` 48 (not in the paper: a cap on each rollout).
    - `evaluator`: ``"harmless"`` (HH self-judge), ``"truthful"``, ``"math_step"``, a `JudgeTemplate`
      or `SelfJudge`, or a callable text -> score in [-1, 1]. `context_format` (slots ``{prompt}``,
      ``{response}``): the judged text; default: the evaluator's own, else ``Human: ... Assistant: ...``.
    - `max_tokens` bounds the committed response (default 256); `trace_searches` adds one trace
      event per search.
    """

    name = "rain"

    def __init__(
        self,
        *,
        num_candidates: int = 10,
        set_lengths: Sequence[int] = (1, 2, 4, 10),
        c_puct: float = 2.0,
        root_prior_mix: float = 0.25,
        value_bounds: tuple[float, float] = (-1.0, 1.0),
        similarity_threshold: float = 0.95,
        similarity_weight: float = 0.2,
        add_variance_factor: float = 0.03,
        add_value_threshold: float = 0.0,
        max_children: int = 20,
        min_visits: int = 6,
        value_threshold: float = 0.8,
        max_visits: int = 50,
        min_new_searches: int = 15,
        boundaries: Sequence[str] = DEFAULT_BOUNDARIES,
        rollout_sampler: Sampler | None = None,
        rollout_max_tokens: int = 48,
        evaluator: Any = "harmless",
        embedder: Any = "auto",
        context_format: str | None = None,
        max_cached_branches: int = 32,
        trace_searches: bool = False,
        clamp_greedy_prior: bool = True,
        max_tokens: int = 256,
        prompt_format: PromptFormat | None = None,
        **kwargs,
    ):
        super().__init__(max_tokens=max_tokens, prompt_format=prompt_format or PromptFormat(instruction=None), **kwargs)
        check_positive_int("num_candidates", num_candidates)
        if isinstance(set_lengths, (str, bytes)) or not set_lengths or any(
                isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in set_lengths):
            raise ValueError(f"set_lengths={set_lengths!r} is out of range; "
                             "accepted: a non-empty sequence of ints >= 1")
        _check_range("c_puct", c_puct, 0.0, math.inf)
        _check_range("root_prior_mix", root_prior_mix, 0.0, 1.0)
        if not (isinstance(value_bounds, (tuple, list)) and len(value_bounds) == 2):
            raise ValueError(f"value_bounds={value_bounds!r}; accepted: (low, high) with -1 <= low < high <= 1")
        _check_range("value_bounds[0]", value_bounds[0], -1.0, 1.0)
        _check_range("value_bounds[1]", value_bounds[1], -1.0, 1.0)
        if not value_bounds[0] < value_bounds[1]:
            raise ValueError(f"value_bounds={value_bounds!r}; accepted: (low, high) with -1 <= low < high <= 1")
        _check_range("similarity_threshold", similarity_threshold, -1.0, 1.0)
        _check_range("similarity_weight", similarity_weight, 0.0, 1.0)
        _check_range("add_variance_factor", add_variance_factor, 0.0, math.inf)
        _check_range("add_value_threshold", add_value_threshold, -1.0, 1.0)
        check_positive_int("max_children", max_children)
        check_positive_int("min_visits", min_visits, minimum=0)
        _check_range("value_threshold", value_threshold, -1.0, 1.0)
        check_positive_int("max_visits", max_visits)
        check_positive_int("min_new_searches", min_new_searches)
        check_positive_int("rollout_max_tokens", rollout_max_tokens, minimum=0)
        check_positive_int("max_cached_branches", max_cached_branches)
        if isinstance(boundaries, str) or not boundaries or any(not isinstance(b, str) or not b for b in boundaries):
            raise ValueError(f"boundaries={boundaries!r}; accepted: a non-empty sequence of non-empty strings")
        if context_format is not None and "{response}" not in context_format:
            raise ValueError("context_format must contain a {response} slot (and usually {prompt})")
        known = isinstance(embedder, str) and embedder in EMBEDDERS
        if not (embedder is None or known or (not isinstance(embedder, str) and hasattr(embedder, "embed"))):
            raise ValueError(f"embedder={embedder!r}; accepted: one of {EMBEDDERS}, None, "
                             "or an object with .embed(texts)")
        self.num_candidates = num_candidates
        self.set_lengths = tuple(set_lengths)
        self.c_puct = float(c_puct)
        self.root_prior_mix = float(root_prior_mix)
        self.value_bounds = (float(value_bounds[0]), float(value_bounds[1]))
        self.similarity_threshold = float(similarity_threshold)
        self.similarity_weight = float(similarity_weight)
        self.add_variance_factor = float(add_variance_factor)
        self.add_value_threshold = float(add_value_threshold)
        self.max_children = max_children
        self.min_visits = min_visits
        self.value_threshold = float(value_threshold)
        self.max_visits = max_visits
        self.min_new_searches = min_new_searches
        self.boundaries = tuple(boundaries)
        self.rollout_sampler = rollout_sampler or Sampler(temperature=1.0)
        self.rollout_max_tokens = rollout_max_tokens
        self.evaluator = as_evaluator(evaluator, context_format)
        self.context_format = context_format or getattr(self.evaluator, "context_format", DEFAULT_CONTEXT_FORMAT)
        self.embedder_spec = embedder
        self.max_cached_branches = max_cached_branches
        self.trace_searches = bool(trace_searches)
        self.clamp_greedy_prior = bool(clamp_greedy_prior)
        self._embedders: dict[int, Any] = {}

    def default_sampler(self) -> Sampler:
        return Sampler(temperature=1.0, top_k=15)

    def prior_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The expansion distribution `[B, V]` whose probabilities make the priors (the sampler's
        filtered distribution; plain softmax when the sampler is greedy)."""
        if self.sampler.greedy:
            return torch.softmax(logits.float(), dim=-1)
        return self.sampler.probs(logits)

    def embedder_for(self, engine: Engine):
        """The resolved embedder for `engine`'s model (built once per model), or None."""
        spec = self.embedder_spec
        if spec is None or not isinstance(spec, str):
            return spec
        key = id(engine.model)
        if key not in self._embedders:
            self._embedders[key] = make_embedder(spec, engine.model, engine.tokenizer)
        return self._embedders[key]

    def judge_rows(self) -> int:
        """Rows the evaluator may hold at once during one evaluation (its cached contexts + 2), + 1."""
        return int(getattr(self.evaluator, "rows_needed", 0)) + 1

    def peak_rows(self, max_rows: int) -> int:
        """At least the K candidates, the root, the leaf, one spare and the evaluator's rows; the tree
        caches up to `max_cached_branches` branches where `max_rows` leaves room (a search evicts
        cached branches to stay within its rows, so lower `max_cached_branches` to run more RAIN
        searches at once)."""
        need = self.num_candidates + 3 + self.judge_rows()
        if max_rows < need:
            raise ValueError(f"engine.max_rows={max_rows} is too small for RAIN with num_candidates="
                             f"{self.num_candidates}: it needs at least {need} rows (K candidates + the judge's "
                             "rows + root, leaf and a spare)")
        return min(max_rows, max(need, max(self.max_cached_branches, self.num_candidates + 2) + self.judge_rows()))

    def shared_judge(self):
        return self.evaluator

    async def search(self, engine: SearchEngine, root: Branch, prompt: str) -> SearchResult:
        trace: list[dict] = []
        embedder = self.embedder_for(engine.engine)
        state = RainSearch(self, engine, root, prompt, self.evaluator, embedder)
        try:
            commits = 0
            while state.done is None:
                before = dict(state.counters)
                fwd0, calls0 = engine.stats.tokens_forwarded, engine.stats.forward_calls
                ran = await state.run_inner_loop(trace)
                summary = state.children_summary()
                visits = state.root.visits
                chosen = state.root.children.index(state.most_visited())
                node = await state.commit()
                commits += 1
                event = {"event": "commit", "commit": commits, "searches": ran, "root_visits": visits,
                         "children": summary, "chosen": chosen, "committed_tokens": list(node.tokens),
                         "committed_text": summary[chosen]["text"],
                         "response_tokens": len(state.committed) - state.prompt_len}
                event.update({k: state.counters[k] - before[k] for k in state.counters})
                event["tokens_forwarded"] = engine.stats.tokens_forwarded - fwd0
                event["forward_calls"] = engine.stats.forward_calls - calls0
                trace.append(event)
            resp = state.committed[state.prompt_len:]
        finally:
            state.close()
        trace.append({"event": "engine_stats", **engine.stats.as_dict()})  # this search's share
        judge_stats = getattr(self.evaluator, "stats", None)
        trace.append({"event": "done", "stop_reason": state.done, "commits": commits,
                      "searches": state.total_searches, **state.counters,
                      "evaluator": judge_stats() if callable(judge_stats) else {},
                      "embedder": type(embedder).__name__ if embedder is not None else None})
        text = engine.tokenizer.decode(resp, skip_special_tokens=True)
        sample = Sample(text=text, answer=extract_answer(text), tokens_generated=len(resp), token_ids=list(resp),
                        stop_reason=state.done)
        return self.result(prompt, sample, [sample], trace)

