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

Engine use: the committed prefix and node states live in the engine's prefix cache, pinned by the
search (at most `max_cached_branches`); a node in use is a prefill the cache serves (its own or a
descendant's state: a row copy, no forward; else its nearest cached ancestor's, forwarding the
missing tokens); expansion forks the leaf K times and decodes all K candidates and the rollout in
ONE batch (one forward per step); the rollout is undone with `rewind`. Randomness comes from
generators seeded from each node's position in the tree (derived from the root branch's seed), so
results are deterministic by seed and do not depend on how branches are cached or batched.

Presets (``RAIN(preset=...)``, `settings.PRESETS`): ``hh`` (the official HH judge's shape),
``truthful`` (one Yes/No judge order, rollouts to the end of the sequence, judged response cut
after its last full stop, T_m = 16) and ``adversarial`` (expansion at temperature 2.0, T_m = 5).

Layout: `settings` (`RainSettings`, one frozen dataclass validated once, and the presets), `tree`
(nodes, priors, selection, backup with the similarity update, node addition), `search` (the
search loop on the engine, `RainSearch`) and `strategy` (the `RAIN` front).

Priors: the greedy candidate's joint probability is clamped into [max + min, sum] of the sampled
candidates' joints before normalising, as the official code does (`clamp_greedy_prior=False` turns
it off). Differences from the official code, on purpose: a candidate that samples EOS ends there
(the official code keeps sampling after EOS), and its joint is extended to the set length by its
per-token geometric mean so shorter sets are not favoured; rollouts are capped at
`rollout_max_tokens`.
"""


from .search import OPTIONAL_EVALUATOR_MEMBERS, RainEvaluator, RainSearch, cut_after_last, judge_rows
from .settings import DEFAULT_BOUNDARIES, PRESETS, RainSettings, preset_options
from .strategy import RAIN
from .tree import (
    Candidate, RainNode, RainTree, backup, clamp_greedy, mix_root_priors, selection_score, similarity_update,
    token_set_length,
)

__all__ = [
    "RAIN", "RainNode", "RainSearch", "RainSettings", "RainTree", "RainEvaluator", "Candidate", "PRESETS",
    "DEFAULT_BOUNDARIES", "selection_score", "mix_root_priors", "backup", "similarity_update", "token_set_length",
    "clamp_greedy", "preset_options", "judge_rows", "cut_after_last", "OPTIONAL_EVALUATOR_MEMBERS",
]
