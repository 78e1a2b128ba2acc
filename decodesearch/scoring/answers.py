"""Answer extraction and checking for math benchmarks.

``extract_answer(text)`` pulls the final answer out of a model's output; ``check_answer(pred,
gold, kind)`` decides whether it is right: ``kind="math"`` with math-verify (MATH-500 style LaTeX
golds), ``kind="aime"`` by integer comparison (AIME, and the synthetic ``arith`` set).
"""

from __future__ import annotations

import functools
import logging
import re
import signal
import threading
import time
from typing import Callable, TypeVar

__all__ = ["extract_answer", "check_answer", "normalize_answer", "CHECK_TIMEOUT_S", "KINDS", "MAX_PRED_CHARS"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Default per-problem checking budget in seconds (parse of gold and prediction plus verify).
CHECK_TIMEOUT_S = 5.0
KINDS = ("math", "aime")  # how an answer is checked: math-verify, or integer compare
#: Predictions longer than this (characters) are not handed to math-verify; only an exact
#: (normalised) string match can make them correct. Guards the LaTeX parser against huge inputs.
MAX_PRED_CHARS = 2000

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_BARE = re.compile(r"\\boxed[ \t]+([^\s$\\]+)")  # "\boxed 5" (no braces)
_FINAL_RE = re.compile(r"final\s+answer\s*(?:is|:|=)\s*:?\s*", re.IGNORECASE)
_ANSWER_RE = re.compile(r"\banswer\s*(?:is|:|=)\s*:?\s*", re.IGNORECASE)
_NUMBER_RE = re.compile(
    r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?![\w])|(?<![\w.])-?\.\d+(?![\w])"
)


def _match_brace(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx`` (``\\{``/``\\}`` are literals), or None."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # escaped char: \{ \} \\ never change the depth
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _last_boxed(text: str) -> str | None:
    """Content of the last complete top-level ``\\boxed{...}``/``\\fbox{...}``, or None."""
    found: list[tuple[int, str]] = []
    pos = 0
    while True:
        m = _BOX_START.search(text, pos)
        if m is None:
            break
        close = _match_brace(text, m.end() - 1)
        if close is None:  # unclosed (e.g. truncated generation): ignore it, keep looking
            pos = m.end()
            continue
        content = text[m.end():close].strip()
        if content:
            found.append((m.start(), content))
        pos = close + 1  # skip boxes nested inside this one
    for m in _BOX_BARE.finditer(text):
        found.append((m.start(), m.group(1).strip()))
    if not found:
        return None
    content = max(found)[1]
    if _BOX_START.match(content) or _BOX_BARE.match(content):  # \boxed{\boxed{5}} -> 5
        return _last_boxed(content) or content
    return content


#: A phrase "answer is X" whose X starts with one of these words states no answer (it introduces
#: one, or judges one): "within", "as follows", "correct", ... Such a sentence cut off by a trigger
#: or a length limit ("So your answer is within") is common in small models' samples.
_NOT_AN_ANSWER = re.compile(r"(?i)(?:within|in|as|below|above|shown|given|correct|incorrect|wrong|right|not|that)\b")


def _clean_phrase(rest: str) -> str | None:
    """The answer at the start of ``rest`` (text after "answer is"): math delimiters or to sentence end."""
    rest = rest.strip().lstrip("*").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(left):
            end = rest.find(right, len(left))
            if end > len(left):
                return rest[len(left):end].strip() or None
            break
    line = rest.split("\n", 1)[0]
    # Sentence end: ". " / end of line, but not a decimal point ("3.5").
    m = re.search(r"\.(?:\s|$)", line)
    if m:
        line = line[: m.start()]
    line = line.strip().strip("*").strip().rstrip(".,;:").strip()
    if re.search(r"\\(?:boxed|fbox)\s*\{\s*\}", line):  # "the final answer is within \boxed{}": the instruction echoed
        return None
    if _NOT_AN_ANSWER.match(line):  # "the answer is within ...", "the answer is correct": a remark, not an answer
        return None
    return line or None


def extract_answer(text: str | None, explicit: bool = False) -> str | None:
    """Final answer in ``text`` as a string, or None when nothing answer-like is found.
    ``explicit=True`` accepts only an answer the text states as one (rules 1 and 2), never the
    last number of a half-done derivation: for answers read mid-generation (before a trigger).

    Tried in this order; the first rule that yields a non-empty string wins:

    1. the last complete ``\\boxed{...}`` or ``\\fbox{...}`` (balanced braces, ``\\{``/``\\}``
       inside are literals; boxes nested in a box are not separate answers; an unclosed box,
       e.g. from a truncated generation, is skipped), or the brace-less ``\\boxed 5``;
    2. the last "final answer is X" / "final answer: X";
    3. the last "answer is X" / "answer: X" / "answer = X";
    4. the last number in the text (``-3``, ``1,234`` -> ``1234``, ``2.5``, ``3/4``).

    For 2 and 3, X is the first ``$...$``, ``\\(...\\)`` or ``\\[...\\]`` right after the phrase if
    it starts with one, else the rest of the line up to a sentence-ending period, with markdown
    ``**`` and trailing punctuation removed. Returned strings are stripped of outer whitespace.
    """
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    for pattern in (_FINAL_RE, _ANSWER_RE):
        last = None
        for m in pattern.finditer(text):
            last = m
        if last is not None:
            ans = _clean_phrase(text[last.end():])
            if ans:
                return ans
        if explicit:
            return None
    nums = _NUMBER_RE.findall(text)
    if nums:
        return nums[-1].replace(",", "")
    return None


_TEXT_WRAP = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\{(.*)\}$", re.DOTALL)


def normalize_answer(ans: str) -> str:
    """Light string normalisation used for fast exact matches and vote grouping (not semantic).

    Strips ``$``, whitespace, ``\\left``/``\\right``, ``\\!``/``\\,``/``\\;`` spacing, a trailing
    period, a ``\\text{...}`` wrapper, and maps ``\\dfrac``/``\\tfrac`` to ``\\frac``.
    """
    s = ans.strip().strip("$").strip()
    m = _TEXT_WRAP.match(s)
    if m:
        s = m.group(1)
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for sp in ("\\!", "\\,", "\\;", "\\:", "\\ ", "~"):
        s = s.replace(sp, "")
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".")


_INT_RE = re.compile(r"^[+-]?\d+(?:\.0*)?$")
_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.0*)?$")


def _as_int(ans: str) -> int | None:
    s = normalize_answer(ans).replace("{,}", ",")
    s = re.sub(r"\^\{?\\circ\}?$", "", s)
    if _THOUSANDS_RE.match(s):  # "1,025" but not a list such as "3,5"
        s = s.replace(",", "")
    if _INT_RE.match(s):
        return int(s.split(".")[0])
    return None


# ---------------------------------------------------------------------------------------------
# Timeout


class _CheckTimeout(BaseException):
    """Raised by our SIGALRM handler; a BaseException so math-verify's ``except Exception`` lets it through."""


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")


def _call_with_timeout(fn: Callable[[], T], timeout_s: float | None) -> tuple[T | None, bool]:
    """Run ``fn()``; return ``(result, timed_out)``.

    Main thread (POSIX): a one-shot ``ITIMER_REAL`` whose SIGALRM handler raises inside ``fn``;
    any timer/handler set by the caller is restored afterwards (its remaining time reduced by
    the time spent here). Other threads (signals are unavailable there): ``fn`` runs in a
    daemon worker thread joined with the timeout; on timeout the worker cannot be killed and
    keeps running in the background until it finishes, its result discarded.
    ``timeout_s`` None or <= 0: no timeout.
    """
    if timeout_s is None or timeout_s <= 0:
        return fn(), False
    if _in_main_thread():
        return _signal_timeout(fn, float(timeout_s))
    return _thread_timeout(fn, float(timeout_s))


def _signal_timeout(fn: Callable[[], T], timeout_s: float) -> tuple[T | None, bool]:
    def handler(signum, frame):
        raise _CheckTimeout()

    start = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, handler)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        try:
            result = fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)  # an alarm firing before this is caught below
        return result, False
    except _CheckTimeout:
        return None, True
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:
            remaining = old_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-3), old_interval)


def _thread_timeout(fn: Callable[[], T], timeout_s: float) -> tuple[T | None, bool]:
    box: dict = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    worker = threading.Thread(target=run, name="decodesearch-check", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return None, True
    if "error" in box:
        raise box["error"]
    return box.get("result"), False


# ---------------------------------------------------------------------------------------------
# math-verify


class _DropNoTimeoutWarning(logging.Filter):
    """math-verify warns once that its own timeout is disabled; we disable it on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


@functools.lru_cache(maxsize=1)
def _math_verify():
    import math_verify  # lazy: pulls in sympy/antlr (~0.5 s)

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_DropNoTimeoutWarning())
    return math_verify


def _wrap(ans: str) -> str:
    """Raw LaTeX answer -> text math-verify parses as that one answer."""
    return "\\boxed{" + ans.strip().strip("$").strip() + "}"


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    mv = _math_verify()
    # Our own timer bounds the whole check, so math-verify's (signal-based, main-thread-only)
    # timeouts are switched off: they would cancel our timer and fail in worker threads.
    return mv.parse(_wrap(gold), parsing_timeout=None)


def _math_equal(pred: str, gold: str) -> bool:
    mv = _math_verify()
    gold_parsed = _parse_gold(gold)
    pred_parsed = mv.parse(_wrap(pred), parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(mv.verify(gold_parsed, pred_parsed, timeout_seconds=None))


def check_answer(pred: str | None, gold: str, kind: str = "math", timeout_s: float | None = CHECK_TIMEOUT_S) -> bool:
    """True iff the predicted answer ``pred`` matches the reference ``gold``.

    ``pred`` is an extracted answer (see ``extract_answer``); None or empty is wrong. If it still
    contains a ``\\boxed{}``/``\\fbox{}``, the box's content is used. ``gold`` is the dataset's raw
    answer string (MATH-500 golds are bare LaTeX; no ``\\boxed`` needed).

    ``kind="aime"``: both sides must be integers; ``"025"``, ``"25.0"``, ``"$25$"``,
    ``"\\text{25}"``, ``"1,025"`` are read as integers; a non-integer prediction is wrong; a
    non-integer gold raises ValueError. ``kind="math"``: an exact match after
    ``normalize_answer`` is correct at once; otherwise math-verify decides
    (``verify(parse(gold), parse(pred))``, gold first, both wrapped in ``\\boxed{}``).
    Predictions over ``MAX_PRED_CHARS`` characters only get the exact-match test.

    ``timeout_s`` (seconds) bounds the whole math-verify check; a check that runs out is wrong
    (logged at WARNING). In the main thread this is a SIGALRM timer (interrupts pure-Python
    work such as sympy simplification; a caller's own SIGALRM timer is preserved); in any other
    thread the check runs in a daemon worker thread that is abandoned on timeout (it may keep
    using CPU until it finishes). None or <= 0 disables the timeout.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected 'math' or 'aime'")
    if pred is None:
        return False
    pred = str(pred)
    if "\\boxed" in pred or "\\fbox" in pred:
        pred = _last_boxed(pred) or ""
    if not pred.strip():
        return False
    gold = str(gold)
    if kind == "aime":
        g = _as_int(gold)
        if g is None:
            raise ValueError(f"aime gold answer {gold!r} is not an integer")
        return _as_int(pred) == g
    if normalize_answer(pred) == normalize_answer(gold):
        return True
    if len(pred) > MAX_PRED_CHARS:
        return False
    result, timed_out = _call_with_timeout(lambda: _math_equal(pred, gold), timeout_s)
    if timed_out:
        log.warning("answer check timed out after %.1f s (pred=%.80r, gold=%.80r); counted wrong", timeout_s, pred, gold)
        return False
    return bool(result)
