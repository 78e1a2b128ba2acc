"""pass@k, majority vote, maj@k and the confidence/critique metrics against hand-computed values."""

import math
from fractions import Fraction

import pytest

from decodesearch.scoring.metrics import maj_at_k, majority_vote, mean_pass_at_k, pass_at_k, self_correction_metrics


# ---------------------------------------------------------------------------------------------
# pass@k


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (10, 0, 1, 0.0),  # nothing correct
        (10, 0, 10, 0.0),
        (5, 5, 3, 1.0),  # everything correct
        (5, 3, 3, 1.0),  # n - c = 2 < k: every 3-subset has a correct sample
        (4, 1, 1, 0.25),  # pass@1 = c/n
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (10, 3, 5, 11 / 12),  # 1 - C(7,5)/C(10,5) = 1 - 21/252
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomial_formula():
    for n in range(1, 25):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


def test_pass_at_k_large_n_is_stable():
    # C(2000, 1000) overflows a float; the product form does not.
    v = pass_at_k(2000, 1, 1000)
    assert v == pytest.approx(0.5, abs=1e-12)
    assert pass_at_k(10_000, 1, 1) == pytest.approx(1e-4)


def test_pass_at_k_errors_name_k():
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="k=0"):
        pass_at_k(4, 1, 0)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)  # c > n
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)


def test_mean_pass_at_k():
    assert mean_pass_at_k([(4, 1), (4, 0), (4, 4)], 1) == pytest.approx((0.25 + 0 + 1) / 3)


# ---------------------------------------------------------------------------------------------
# majority vote, maj@k


def test_majority_vote_basic_and_ties():
    assert majority_vote(["3", "5", "5"]) == "5"
    assert majority_vote(["a", "b", "b", "a"]) == "a"  # tie -> earliest first occurrence
    assert majority_vote(["b", "a", "a", "b", "c"]) == "b"
    assert majority_vote([None, "b", None, None]) == "b"  # None ignored
    assert majority_vote([None, None]) is None  # all None
    assert majority_vote([]) is None


def test_majority_vote_equivalence():
    def to_num(s):
        return Fraction(s) if "/" in s else Fraction(s)

    eq = lambda x, y: to_num(x) == to_num(y)
    # "0.5" and "1/2" form one group (2 votes), "3" two votes: tie -> the group seen first
    assert majority_vote(["3", "0.5", "1/2", "3"], is_equiv=eq) == "3"
    assert majority_vote(["0.5", "3", "1/2", "3"], is_equiv=eq) == "0.5"
    assert majority_vote(["1/2", "3", "0.5"], is_equiv=eq) == "1/2"  # representative = first occurrence
    assert majority_vote([" 7", "7 ", "8"], key=str.strip) == " 7"


def test_maj_at_k():
    answers = ["1", "2", "2", None]
    correct = [True, False, False, False]
    assert maj_at_k(answers, correct, k=1) is True
    assert maj_at_k(answers, correct, k=2) is True  # tie 1-1 -> "1" seen first
    assert maj_at_k(answers, correct, k=3) is False
    assert maj_at_k(answers, correct) is False
    assert maj_at_k([None, None], [False, False]) is False
    with pytest.raises(ValueError, match="k=5"):
        maj_at_k(answers, correct, k=5)
    with pytest.raises(ValueError):
        maj_at_k(answers, correct[:2])


# ---------------------------------------------------------------------------------------------
# CL / CS / Acc1 -> Acc2 / RSS


T, F = True, False

# A constructed trace: per question, (correct_before, correct_after) pairs.
TRACE = [
    [(T, T), (T, F), (F, T), (F, F)],  # a=1/2, b=1/2, P(a&b)=1/4, P(~a&b)=1/4
    [(T, T), (T, T)],  # a=1,   b=1,   P(a&b)=1,   P(~a&b)=0   (P(b|~a) undefined)
    [(F, F), (F, T), (F, F), (F, F)],  # a=0, b=1/4, P(a&b)=0, P(~a&b)=1/4 (P(b|a) undefined)
    [],  # no pairs: skipped
]


def test_self_correction_hand_computed():
    s = self_correction_metrics(TRACE)
    # Acc1 = (1/2 + 1 + 0)/3 = 1/2 ; Acc2 = (1/2 + 1 + 1/4)/3 = 7/12
    assert s.acc1 == pytest.approx(1 / 2)
    assert s.acc2 == pytest.approx(7 / 12)
    # CL = sum a_i P(b|a)_i / sum a_i = (1/4 + 1 + 0) / (1/2 + 1 + 0) = 5/6
    assert s.cl == pytest.approx(5 / 6)
    # CS = sum (1-a_i) P(b|~a)_i / sum (1-a_i) = (1/4 + 0 + 1/4) / (1/2 + 0 + 1) = 1/3
    assert s.cs == pytest.approx(1 / 3)
    # Acc2 = Acc1 CL + (1-Acc1) CS = 5/12 + 2/12
    assert s.acc1 * s.cl + (1 - s.acc1) * s.cs == pytest.approx(s.acc2)
    # RSS = (Acc2 - Acc1^2) / (2 Acc1 (1-Acc1)) = (7/12 - 3/12) / (1/2) = 2/3
    assert s.rss == pytest.approx(2 / 3)
    assert (s.n_questions, s.n_pairs) == (3, 10)


def test_self_correction_undefined_conditionals_have_zero_weight():
    # Question 3 never has a correct "before": it must not move CL at all.
    assert self_correction_metrics(TRACE[:2]).cl == pytest.approx(self_correction_metrics(TRACE).cl)
    # Question 2 never has a wrong "before": it must not move CS.
    assert self_correction_metrics([TRACE[0], TRACE[2]]).cs == pytest.approx(self_correction_metrics(TRACE).cs)


def test_self_correction_degenerate():
    all_right = self_correction_metrics([[(T, T), (T, F)]])
    assert all_right.acc1 == 1.0 and all_right.cl == 0.5 and all_right.cs is None and all_right.rss is None
    all_wrong = self_correction_metrics([[(F, T)], [(F, F)]])
    assert all_wrong.acc1 == 0.0 and all_wrong.cl is None and all_wrong.cs == 0.5 and all_wrong.rss is None
    empty = self_correction_metrics([[], []])
    assert empty.n_questions == 0 and empty.acc1 is None and empty.cl is None
