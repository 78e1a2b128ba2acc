"""Answer extraction and checking (decodesearch.scoring.answers)."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from decodesearch.scoring import answers as A
from decodesearch.scoring.answers import check_answer, extract_answer, normalize_answer


def _data_dir() -> Path:
    env = os.environ.get("DECODESEARCH_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"  # <repo>/../shared/data


# ---------------------------------------------------------------------------------------------
# extract_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"first \boxed{1}, then \boxed{2}", "2"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"set $\boxed{\{1, 2\}}$", r"\{1, 2\}"),
        (r"\fbox{7}", "7"),
        (r"\boxed{3} and then a truncated \boxed{\frac{1}{", "3"),  # unclosed last box skipped
        (r"\boxed{\boxed{5}}", "5"),
        (r"\boxed 5$", "5"),
        (r"\boxed{}", None),
        ("The final answer is $\\frac{3}{4}$. I hope it is correct.", r"\frac{3}{4}"),
        ("The answer is 3. Wait, the final answer is 4.", "4"),  # "final answer" before "answer is"
        ("**Answer:** 17\nThere were 20 apples.", "17"),  # "answer:" before last number
        ("answer = 3.5.", "3.5"),
        ("Sum is 12. The final answer is within \\boxed{}.", "12"),  # the instruction echoed, not an answer
        ("r = 3, so your answer is within\n\nWait, let me check", "3"),  # a sentence cut by a trigger
        ("The area is 12. The answer is correct.", "12"),  # a remark on an answer, not one
        ("The answer is infinity.", "infinity"),  # a word that only starts like a remark
        ("The answer is: $(3, 4]$", "(3, 4]"),
        ("I count 1,234 apples and 12 pears", "12"),  # last number
        ("she has -7 left", "-7"),
        ("about 3/4 of them", "3/4"),
        ("no digits at all", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_normalize_answer():
    assert normalize_answer(r"$\left( 3, \dfrac{\pi}{2} \right)$") == r"(3,\frac{\pi}{2})"
    assert normalize_answer(r"10,\!080") == "10,080"
    assert normalize_answer(r"\text{Evelyn}") == "Evelyn"


# ---------------------------------------------------------------------------------------------
# check_answer on real MATH-500 golds


def test_math500_golds_verify_against_themselves():
    path = _data_dir() / "math500.jsonl"
    assert path.is_file(), f"{path} not found: the shared data folder sits beside the repository (or set DECODESEARCH_DATA)"
    with open(path, encoding="utf-8") as f:
        golds = [json.loads(line)["answer"] for _, line in zip(range(100), f)]
    assert len(golds) == 100
    failed = []
    for gold in golds:
        text = f"Putting it together, the answer is $\\boxed{{{gold}}}$. Done."
        pred = extract_answer(text)
        if pred is None or not check_answer(pred, gold) or not check_answer(text, gold):
            failed.append((gold, pred))
    assert not failed, failed


def test_math500_reference_solutions_extract_to_gold():
    path = _data_dir() / "math500.jsonl"
    assert path.is_file(), f"{path} not found: the shared data folder sits beside the repository (or set DECODESEARCH_DATA)"
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(100), f)]
    bad = [(r["id"], extract_answer(r["solution"]), r["answer"]) for r in rows
           if not check_answer(extract_answer(r["solution"]), r["answer"])]
    assert not bad, bad


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("0.5", r"\frac12"),
        ("1/2", r"\dfrac{1}{2}"),
        (r"\sqrt{117}", r"3\sqrt{13}"),
        ("18.90", r"\$18.90"),
        ("90", r"90^\circ"),
        ("10080", r"10,\!080"),
        ("-2, 1", "1,-2"),
        ("y=2x+3", "y = 2x + 3"),
        (r"(3, \frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)"),
        ("C", r"\text{(C)}"),
    ],
)
def test_check_math_equivalent(pred, gold):
    assert check_answer(pred, gold, "math")


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("p + q", "p - q"),
        (r"(3, \pi)", r"\left( 3, \frac{\pi}{2} \right)"),
        ("[3,4]", "(3,4]"),
        (r"\text{Bob}", r"\text{Evelyn}"),
        ("100", "10"),
        (r"\frac{3}{14}", r"\frac{14}{3}"),
        ("42", "52_8"),
        ("", "5"),
        (None, "5"),
    ],
)
def test_check_math_negatives(pred, gold):
    assert not check_answer(pred, gold, "math")


@pytest.mark.parametrize(
    "pred, ok",
    [("25", True), ("025", True), ("25.0", True), ("$25$", True), (r"\boxed{025}", True), (r"\text{25}", True),
     ("+25", True), ("25.5", False), ("52", False), ("twenty-five", False), (None, False)],
)
def test_check_aime(pred, ok):
    assert check_answer(pred, "25", "aime") is ok


def test_check_aime_thousands_and_bad_gold():
    assert check_answer("1,025", "1025", "aime")
    assert check_answer(r"1{,}025", "1025", "aime")
    assert not check_answer("3, 5", "35", "aime")  # a list, not a number
    with pytest.raises(ValueError, match="not an integer"):
        check_answer("1", r"\frac12", "aime")
    with pytest.raises(ValueError, match="unknown answer kind"):
        check_answer("1", "1", "gsm")


# ---------------------------------------------------------------------------------------------
# timeouts


PATHOLOGICAL = "9999999^{999999999}"  # sympy would grind on this for minutes


def test_pathological_input_times_out_in_main_thread():
    t0 = time.monotonic()
    assert check_answer(PATHOLOGICAL, "5", "math", timeout_s=0.3) is False
    assert time.monotonic() - t0 < 3.0


def test_timeout_preserves_callers_alarm():
    fired = []
    mine = lambda *a: fired.append(1)  # noqa: E731
    old = signal.signal(signal.SIGALRM, mine)
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert check_answer(PATHOLOGICAL, "5", "math", timeout_s=0.2) is False
        assert check_answer("0.5", r"\frac12", "math", timeout_s=1.0) is True
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 20.0 < remaining <= 30.0  # caller's timer re-armed with its remaining time
        assert signal.getsignal(signal.SIGALRM) is mine and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_check_answer_outside_main_thread():
    out = {}

    def work():
        try:
            out["pos"] = check_answer(r"\frac{1}{2}", "0.5", "math", timeout_s=5)
            out["neg"] = check_answer("p + q", "p - q", "math", timeout_s=5)
        except BaseException as e:  # pragma: no cover - reported below
            out["err"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join(30)
    assert out == {"pos": True, "neg": False}


def test_thread_timeout_fallback_returns_promptly():
    result = {}

    def work():
        t0 = time.monotonic()
        result["r"] = A._call_with_timeout(lambda: time.sleep(2.0) or "late", 0.1)
        result["dt"] = time.monotonic() - t0

    t = threading.Thread(target=work)
    t.start()
    t.join(10)
    assert result["r"] == (None, True)
    assert result["dt"] < 1.0
    # and a fast function returns its value, an exception propagates
    assert A._thread_timeout(lambda: 7, 1.0) == (7, False)
    with pytest.raises(ZeroDivisionError):
        A._thread_timeout(lambda: 1 / 0, 1.0)
