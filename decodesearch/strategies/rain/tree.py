"""RAIN's search tree: token-set nodes, priors, selection, backup with the similarity update, and
node addition. No engine here: the search (`search.py`) decodes and hands the tree what it got.

Formulas (each a function, tested against hand-computed numbers): `selection_score` (PUCT with
min-max normalised q), `mix_root_priors`, `backup`, `similarity_update`, `clamp_greedy`,
`token_set_length`. `RainTree` applies them to a tree under one `RainSettings`.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch

from decodesearch.engine import StopReason, derive_seed
from decodesearch.scoring.embeddings import cosine

from .settings import RainSettings

__all__ = [
    "RainNode", "RainTree", "Candidate", "selection_score", "mix_root_priors", "backup", "similarity_update",
    "clamp_greedy", "token_set_length",
]

_NORM_EPS = 1e-5  # the official code's guard in (q - min) / (max - min + eps)


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


# ---------------------------------------------------------------------------------------- nodes


class RainNode:
    """A token set in the search tree. `n` counts visits plus similarity weight (a float); `visits`
    counts searches through the node (an int); `evals` counts searches that ended at it. `joint` is
    the set's joint probability under the expansion distribution, `prior` it normalised over the
    siblings. `seq_len` is the length of the whole sequence (prompt included) ending with this set.
    `terminal` is None or why the sequence cannot grow (``"eos"``, ``"length"``, ``"stop_string"``,
    ``"context"``). `cached`: whether the search holds a pin on the node's state in the engine's prefix cache."""

    __slots__ = ("parent", "tokens", "joint", "prior", "children", "n", "visits", "evals", "q", "embedding",
                 "step", "seq_len", "seed", "terminal", "cached", "last_used", "added", "expanded")

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
        self.cached = False
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


class Candidate:
    """A decoded candidate set handed to `RainTree.add_candidates`: its tokens, `kind` (``"greedy"``
    or ``"sample"``), summed log-probability under the expansion distribution `logp`, why its
    decode stopped (`stop`: None, ``"length"``, ``"eos"``, ``"stop_string"``, ``"context"``) and its
    set length `limit`."""

    __slots__ = ("tokens", "kind", "logp", "stop", "limit")

    def __init__(self, tokens: Sequence[int], kind: str, logp: float, stop: str | None, limit: int):
        self.tokens, self.kind, self.logp, self.stop, self.limit = tuple(tokens), kind, logp, stop, limit


# ---------------------------------------------------------------------------------------- tree


class RainTree:
    """The tree above the committed prefix and the running bounds of q (for q̂'s normalisation)."""

    def __init__(self, settings: RainSettings, root: RainNode):
        self.settings = settings
        self.root = root
        self.q_min, self.q_max = settings.value_bounds

    # ------------------------------------------------------------------ priors and new children

    @staticmethod
    def set_priors(node: RainNode) -> None:
        """Each child's prior: its joint normalised over the siblings (uniform if they sum to 0)."""
        total = sum(c.joint for c in node.children)
        k = len(node.children)
        for c in node.children:
            c.prior = c.joint / total if total > 0 else 1.0 / k

    @staticmethod
    def new_child(parent: RainNode, tokens: Sequence[int], joint: float, terminal: str | None) -> RainNode:
        child = RainNode(parent, tokens, joint, parent.step + 1, parent.seq_len + len(tokens),
                         derive_seed(parent.seed, len(parent.children)), terminal)
        parent.children.append(child)
        return child

    def add_candidates(self, parent: RainNode, cands: Sequence[Candidate]) -> list[RainNode | None]:
        """New children from decoded candidates, one entry per candidate: the child, or None for a
        duplicate (same tokens and same EOS ending as a sibling) or an empty set not ended by EOS.
        A set that ended at EOS after m of L tokens gets the joint ``exp(logp · L / m)`` (its per-token
        geometric mean over L tokens, EOS counted), so a shorter set is not favoured by having fewer
        factors. With `clamp_greedy_prior`, the greedy set's joint is clamped into ``[max + min, sum]``
        of the sampled sets' joints, as the official code does before normalising (`clamp_greedy`)."""
        seen = {(c.tokens, c.terminal == StopReason.EOS) for c in parent.children}
        made: list[RainNode | None] = []
        kinds: list[tuple[RainNode, str]] = []
        for cand in cands:
            key = (cand.tokens, cand.stop == StopReason.EOS)
            if key in seen or (not cand.tokens and cand.stop != StopReason.EOS):
                made.append(None)
                continue
            seen.add(key)
            terminal = cand.stop if cand.stop in (StopReason.EOS, StopReason.STOP_STRING, StopReason.CONTEXT) else None
            steps = len(cand.tokens) + (cand.stop == StopReason.EOS)
            logp = cand.logp * cand.limit / steps if cand.stop == StopReason.EOS and steps < cand.limit else cand.logp
            child = self.new_child(parent, cand.tokens, math.exp(logp), terminal)
            made.append(child)
            kinds.append((child, cand.kind))
        sampled = [c.joint for c, kind in kinds if kind == "sample"]
        if self.settings.clamp_greedy_prior and sampled:
            for c, kind in kinds:
                if kind == "greedy":
                    c.joint = clamp_greedy(c.joint, sampled)
        self.set_priors(parent)
        return made

    def add_top_tokens(self, parent: RainNode, logits: torch.Tensor, count: int, eos_ids: Iterable[int],
                       stops: Callable[[int], bool]) -> int:
        """Add up to `count` new 1-token children, best first, skipping existing ones (`stops(t)`: the
        response would hit a stop string with token t). Returns how many were added."""
        # The official code ranks 1-token sets by the expansion distribution's temperature without
        # its top-k (T = 1, or 2.0 for the adversarial variant); priors are these probabilities
        # renormalised over the siblings (`set_priors`).
        temp = self.settings.sampler.temperature or 1.0
        probs = torch.softmax(logits.float() / temp, dim=-1)
        order = torch.argsort(probs, descending=True).tolist()
        eos = set(eos_ids)
        have = {c.tokens for c in parent.children}
        if any(c.terminal == StopReason.EOS for c in parent.children):
            have.add(())
        added = 0
        for t in order:
            if added >= count or probs[t] <= 0:
                break
            tokens = () if t in eos else (t,)
            if tokens in have:
                continue
            have.add(tokens)
            terminal = StopReason.EOS if t in eos else (StopReason.STOP_STRING if stops(t) else None)
            self.new_child(parent, tokens, float(probs[t]), terminal)
            added += 1
        self.set_priors(parent)
        return added

    # ------------------------------------------------------------------ selection

    def priors_for_selection(self, node: RainNode) -> list[float]:
        priors = [c.prior for c in node.children]
        return mix_root_priors(priors, self.settings.root_prior_mix) if node is self.root else priors

    def select(self, node: RainNode) -> RainNode:
        """The child of `node` with the highest `selection_score` (first on ties)."""
        s = self.settings
        best, best_s = None, -math.inf
        for c, p in zip(node.children, self.priors_for_selection(node)):
            score = selection_score(c.q, c.n, p, node.n, s.c_puct, self.q_min, self.q_max)
            if score > best_s:
                best, best_s = c, score
        return best

    def most_visited(self, node: RainNode | None = None) -> RainNode | None:
        """The child of `node` (default: the root) with the most visits `n`, ties broken by q."""
        node = node or self.root
        if not node.children:
            return None
        return max(node.children, key=lambda c: (c.n, c.q))

    def wants_child(self, node: RainNode) -> bool:
        """Dynamic node addition's test (paper §3, official code): at least two children, all with
        embeddings, fewer than `max_children`; the L2 norm of their per-dimension embedding variance
        below ``add_variance_factor · (token-set length)`` and every child's q below
        `add_value_threshold`."""
        s = self.settings
        kids = node.children
        if len(kids) >= s.max_children or len(kids) < 2 or any(c.embedding is None for c in kids):
            return False
        length = token_set_length(node.step, s.set_lengths)
        spread = float(torch.var(torch.stack([c.embedding for c in kids]), dim=0).norm())
        return spread < s.add_variance_factor * length and max(c.q for c in kids) < s.add_value_threshold

    # ------------------------------------------------------------------ backup

    def backup(self, path: Sequence[RainNode], v: float, embeddings: dict[int, torch.Tensor]) -> None:
        """Back up value `v` along `path` (root first). `embeddings[id(node)]` is the embedding of the
        text from a path node's set to the end of the rollout: the node's embedding is the running
        mean of these, and every sibling with ``cos > similarity_threshold`` gets `similarity_update`."""
        s = self.settings
        for node in reversed(path):
            node.visits += 1
            node.q, node.n = backup(node.q, node.n, v)
            if node is not self.root:
                e = embeddings.get(id(node))
                if e is not None:
                    node.embedding = e.clone() if node.embedding is None else \
                        node.embedding + (e - node.embedding) / node.visits
                    for sib in node.parent.children:
                        if sib is node or sib.embedding is None:
                            continue
                        sim = cosine(node.embedding, sib.embedding)
                        if sim > s.similarity_threshold:
                            sib.q, sib.n = similarity_update(sib.q, sib.n, v, sim, s.similarity_weight)
                            self.widen(sib.q)
                self.widen(node.q)

    def widen(self, q: float) -> None:
        self.q_min = min(self.q_min, q)
        self.q_max = max(self.q_max, q)

    # ------------------------------------------------------------------ commit

    def reroot(self, new: RainNode) -> None:
        """Make `new` (a child of the root) the root, dropping the rest of the old tree."""
        old = self.root
        new.parent = None
        old.children = []
        self.root = new
