"""Accuracy metrics over sampled answers: pass@k, majority vote / maj@k, and the
confidence/critique decomposition of self-correction (CL, CS, Acc1 -> Acc2, RSS)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Hashable, Iterable, Sequence

__all__ = [
    "pass_at_k",
    "mean_pass_at_k",
    "majority_vote",
    "vote_index",
    "maj_at_k",
    "SelfCorrectionStats",
    "self_correction_metrics",
]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate for one problem with ``n`` samples of which ``c`` are correct.

    ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021, "Evaluating Large Language Models Trained on
    Code", arXiv 2107.03374), computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` so no huge
    binomials appear. Returns 0.0 when ``c == 0`` and 1.0 when ``n - c < k`` (every k-subset
    holds a correct sample). Raises ValueError for ``k < 1``, ``k > n``, or ``c`` outside [0, n].
    """
    if n < 0 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if k < 1 or k > n:
        raise ValueError(f"pass_at_k: k={k} must satisfy 1 <= k <= n (n={n} samples)")
    if c == 0:
        return 0.0
    if n - c < k:
        return 1.0
    # C(n-c,k)/C(n,k) = prod_{j=0}^{k-1} (n-c-j)/(n-j) = prod_{i=n-c+1}^{n} (1 - k/i)
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """Mean of ``pass_at_k(n, c, k)`` over ``(n, c)`` pairs, one per problem (ValueError if none)."""
    vals = [pass_at_k(n, c, k) for n, c in counts]
    if not vals:
        raise ValueError("mean_pass_at_k: no problems")
    return sum(vals) / len(vals)


def _groups(answers: Sequence, is_equiv: Callable | None, key: Callable | None,
            weights: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """[(index of first occurrence, count or summed weight)] of equivalence groups of the non-None
    answers, in order."""
    groups: list[list] = []  # [first_index, count]
    by_key: dict[Hashable, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        w = 1 if weights is None else weights[i]
        if is_equiv is None:
            h = key(a) if key is not None else a
            g = by_key.get(h)
            if g is None:
                by_key[h] = len(groups)
                groups.append([i, w])
            else:
                groups[g][1] += w
        else:
            for g in groups:
                if is_equiv(answers[g[0]], a):
                    g[1] += w
                    break
            else:
                groups.append([i, w])
    return [(g[0], g[1]) for g in groups]


def vote_index(answers: Sequence, is_equiv: Callable | None = None, key: Callable | None = None,
               weights: Sequence[float] | None = None) -> int | None:
    """Index of `majority_vote`'s winner in `answers` (its first occurrence), or None. With `weights`
    (one per answer), a group's vote is the sum of its answers' weights (weighted best-of-N)."""
    groups = _groups(answers, is_equiv, key, weights)
    if not groups:
        return None
    # max count; ties -> earliest first occurrence (groups are already in first-occurrence order)
    best = max(groups, key=lambda g: (g[1], -g[0]))
    return best[0]


def majority_vote(answers: Sequence, is_equiv: Callable | None = None, key: Callable | None = None):
    """Most frequent answer; returns the representative (its first occurrence), or None.

    None answers are ignored; if all are None (or the list is empty) the result is None.
    Grouping: by ``is_equiv(representative, answer)`` if given (each answer joins the first
    earlier group whose representative it is equivalent to; O(n * groups) calls), else by
    ``key(answer)`` if given, else by equality. Ties go to the group whose first occurrence
    is earliest in ``answers``.
    """
    i = vote_index(answers, is_equiv, key)
    return None if i is None else answers[i]


def maj_at_k(
    answers: Sequence,
    correct: Sequence[bool],
    k: int | None = None,
    is_equiv: Callable | None = None,
    key: Callable | None = None,
) -> bool:
    """Whether the majority vote over the first ``k`` samples (all if None) is correct.

    ``correct[i]`` is the correctness of ``answers[i]``; the vote's correctness is that of the
    winning group's first occurrence. All-None answers -> False. Raises ValueError if the
    lengths differ or ``k`` is not in [1, len(answers)].
    """
    if len(answers) != len(correct):
        raise ValueError(f"maj_at_k: {len(answers)} answers but {len(correct)} correctness flags")
    if k is None:
        k = len(answers)
    if k < 1 or k > len(answers):
        raise ValueError(f"maj_at_k: k={k} must satisfy 1 <= k <= {len(answers)} (number of samples)")
    i = vote_index(list(answers[:k]), is_equiv, key)
    return False if i is None else bool(correct[i])


def weighted_at_k(
    answers: Sequence,
    correct: Sequence[bool],
    scores: Sequence[float],
    k: int | None = None,
    key: Callable | None = None,
) -> bool:
    """Whether the score-weighted vote over the first ``k`` samples (all if None) is correct: each
    answer group's vote is the sum of its samples' scores (weighted best-of-N, as search-and-learn
    reports it). Same conventions as `maj_at_k`."""
    if not len(answers) == len(correct) == len(scores):
        raise ValueError(f"weighted_at_k: {len(answers)} answers, {len(correct)} flags, {len(scores)} scores")
    k = len(answers) if k is None else k
    if k < 1 or k > len(answers):
        raise ValueError(f"weighted_at_k: k={k} must satisfy 1 <= k <= {len(answers)} (number of samples)")
    i = vote_index(list(answers[:k]), key=key, weights=list(scores[:k]))
    return False if i is None else bool(correct[i])


@dataclass
class SelfCorrectionStats:
    """Confidence/critique decomposition (arXiv 2412.19513). Probabilities in [0, 1]; None = undefined.

    acc1: accuracy before the correction step; acc2: accuracy after; cl: P(correct after |
    correct before) (confidence level); cs: P(correct after | wrong before) (critique score);
    rss: (acc2 - acc1^2) / (2 acc1 (1 - acc1)) (relative self-correction score); n_questions / n_pairs:
    questions with at least one pair, and pairs, that entered the estimate.
    """

    acc1: float | None
    acc2: float | None
    cl: float | None
    cs: float | None
    rss: float | None
    n_questions: int
    n_pairs: int

    def as_dict(self) -> dict:
        return asdict(self)


def self_correction_metrics(pairs_per_question: Iterable[Sequence[tuple[bool, bool]]]) -> SelfCorrectionStats:
    """CL, CS, Acc1, Acc2 and RSS from ``(correct_before, correct_after)`` pairs, one list per question.

    Estimation (Yang et al., "Confidence v.s. Critique", arXiv 2412.19513): for question i with
    pairs P_i, a_i = share of pairs correct before, b_i = share correct after,
    ab_i = share correct both times, nb_i = share wrong before and correct after. Then
    ``Acc1 = mean_i a_i``, ``Acc2 = mean_i b_i``,
    ``CL = sum_i a_i P(b|a)_i / sum_i a_i = sum_i ab_i / sum_i a_i``,
    ``CS = sum_i (1-a_i) P(b|not a)_i / sum_i (1-a_i) = sum_i nb_i / sum_i (1-a_i)``:
    the per-question conditionals weighted by how often their condition occurs, so a question
    whose condition never occurs (P(b|a)_i undefined because a_i = 0) has weight 0 and does
    not enter CL (likewise for CS with a_i = 1). This makes ``Acc2 = Acc1*CL + (1-Acc1)*CS``
    hold exactly. CL is None when no pair was correct before (Acc1 = 0), CS None when every
    pair was (Acc1 = 1), RSS None when Acc1 is 0 or 1. Questions with no pairs are skipped.
    """
    a_sum = b_sum = ab_sum = nb_sum = 0.0
    nq = npairs = 0
    for pairs in pairs_per_question:
        pairs = list(pairs)
        if not pairs:
            continue
        m = len(pairs)
        nq += 1
        npairs += m
        a_sum += sum(1 for x, _ in pairs if x) / m
        b_sum += sum(1 for _, y in pairs if y) / m
        ab_sum += sum(1 for x, y in pairs if x and y) / m
        nb_sum += sum(1 for x, y in pairs if (not x) and y) / m
    if nq == 0:
        return SelfCorrectionStats(None, None, None, None, None, 0, 0)
    acc1 = a_sum / nq
    acc2 = b_sum / nq
    cl = ab_sum / a_sum if a_sum > 0 else None
    not_a = nq - a_sum
    cs = nb_sum / not_a if not_a > 1e-12 else None
    rss = (acc2 - acc1 * acc1) / (2.0 * acc1 * (1.0 - acc1)) if 0.0 < acc1 < 1.0 else None
    return SelfCorrectionStats(acc1, acc2, cl, cs, rss, nq, npairs)
