"""Benchmark datasets: local JSONL files, MATH-500 / AIME (data dir or HF hub), synthetic ``arith``."""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from decodesearch.scoring.answers import KINDS

__all__ = ["Problem", "load_problems", "load_jsonl", "make_arith", "DATASET_NAMES", "DATA_ENV"]

#: Environment variable naming the folder with math500.jsonl / aime2024.jsonl / aime2025.jsonl.
DATA_ENV = "DECODESEARCH_DATA"


@dataclass(frozen=True)
class Problem:
    """One benchmark problem. ``kind`` selects the answer checker: "math" (math-verify) or "aime" (integers)."""

    id: str
    problem: str
    answer: str
    kind: str = "math"


# name -> (kind, data-dir file names tried in order, hub sources tried in order)
# A hub source is (repo id, config name or None, split).
_NAMED: dict[str, tuple[str, tuple[str, ...], tuple[tuple[str, str | None, str], ...]]] = {
    "math500": ("math", ("math500.jsonl", "math-500.jsonl"), (("HuggingFaceH4/MATH-500", None, "test"),)),
    "aime24": (
        "aime",
        ("aime2024.jsonl", "aime24.jsonl"),
        (("Maxwell-Jia/AIME_2024", None, "train"), ("HuggingFaceH4/aime_2024", None, "train")),
    ),
    "aime25": (
        "aime",
        ("aime2025.jsonl", "aime25.jsonl"),
        (("opencompass/AIME2025", "AIME2025-I", "test"), ("opencompass/AIME2025", "AIME2025-II", "test")),
    ),
}
_ALIASES = {"math-500": "math500", "aime2024": "aime24", "aime2025": "aime25"}
DATASET_NAMES = tuple(_NAMED) + ("arith",)

#: A gold answer that is a whole number (AIME-style): local files of these are checked as "aime".
_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")

#: Problems generated for ``arith`` when no limit is given.
ARITH_DEFAULT_N = 100


def load_problems(
    name_or_path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    kind: str | None = None,
) -> list[Problem]:
    """Load a benchmark as a list of Problems (file order; ``limit`` keeps the first N).

    ``name_or_path``:
      * ``math500`` / ``aime24`` / ``aime25``: from ``data_dir`` (else ``$DECODESEARCH_DATA``) if
        it holds ``math500.jsonl`` / ``aime2024.jsonl`` or ``aime24.jsonl`` / ``aime2025.jsonl``
        or ``aime25.jsonl``; else from the HF hub through the ``datasets`` library
        (HuggingFaceH4/MATH-500; Maxwell-Jia/AIME_2024; opencompass/AIME2025 I+II). If neither
        works, RuntimeError telling to pass ``--data-dir``.
      * ``arith``: ``limit`` (default 100) synthetic word problems generated from ``seed``.
      * anything else: a local JSONL file with string-able fields ``id``, ``problem``,
        ``answer`` (optional ``kind``); a malformed line raises ValueError naming file and line,
        and a file without any problem is a ValueError too.
    ``kind`` overrides the answer kind of every problem ("math" or "aime"; None or "auto": the
    default, "math" for math500, "aime" for aime24/aime25/arith, and for a local file each
    record's ``kind``, else "aime" when every gold answer of the file is an integer (AIME-style
    files), else "math"). ``seed`` only affects ``arith``.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if kind not in (None, "auto") and kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not accepted; choose one of auto, {', '.join(KINDS)}")
    name = str(name_or_path)
    key = _ALIASES.get(name.lower(), name.lower())
    if key == "arith" and not Path(name).exists():
        probs = make_arith(ARITH_DEFAULT_N if limit is None else limit, seed=seed)
    elif key in _NAMED and not Path(name).is_file():
        probs = _load_named(key, data_dir)
    else:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"dataset {name!r} is neither a file nor one of {', '.join(DATASET_NAMES)}"
            )
        probs = load_jsonl(path, default_kind=None)
        if not probs:
            raise ValueError(f"dataset file {path} holds no problems (it is empty); expected one JSON object "
                             "per line with fields id, problem, answer")
        if kind in (None, "auto"):
            guess = "aime" if all(_INTEGER.match(p.answer) for p in probs) else "math"
            probs = [p if p.kind is not None else Problem(p.id, p.problem, p.answer, guess) for p in probs]
    if kind not in (None, "auto"):
        probs = [Problem(p.id, p.problem, p.answer, kind) for p in probs]
    return probs if limit is None else probs[:limit]


def load_jsonl(path: str | os.PathLike, default_kind: str | None = "math") -> list[Problem]:
    """Problems from a JSONL file (fields ``id``, ``problem``, ``answer``, optional ``kind``;
    records without one get ``default_kind``, which may be None for the caller to decide).

    Blank lines are skipped. Raises ValueError "<file>:<line>: <what is wrong>" for invalid
    JSON, a non-object line, a missing/empty field, a bad ``kind`` or a duplicate id.
    """
    path = Path(path)
    probs: list[Problem] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            for field in ("id", "problem", "answer"):
                if field not in rec:
                    raise ValueError(f"{where}: missing field {field!r} (have: {', '.join(sorted(rec)) or 'none'})")
                val = rec[field]
                if val is None or isinstance(val, (dict, list, bool)) or str(val).strip() == "":
                    raise ValueError(f"{where}: field {field!r} must be a non-empty string or number, got {val!r}")
            kind = rec.get("kind", default_kind)
            if kind not in KINDS and not (kind is None and "kind" not in rec):
                raise ValueError(f"{where}: field 'kind' must be 'math' or 'aime', got {kind!r}")
            pid = str(rec["id"])
            if pid in seen:
                raise ValueError(f"{where}: duplicate id {pid!r} (first on line {seen[pid]})")
            seen[pid] = lineno
            probs.append(Problem(pid, str(rec["problem"]), str(rec["answer"]), kind))
    return probs


def _load_named(key: str, data_dir) -> list[Problem]:
    kind, files, hub = _NAMED[key]
    tried: list[str] = []
    folder = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or None
    if folder is not None:
        for fname in files:
            p = Path(folder) / fname
            if p.is_file():
                probs = load_jsonl(p, default_kind=kind)
                if not probs:
                    raise ValueError(f"dataset file {p} holds no problems (it is empty)")
                return probs
        tried.append(f"no {' or '.join(files)} in {folder}")
    else:
        tried.append(f"no --data-dir given and ${DATA_ENV} is unset")
    reason = _hub_unreachable(hub[0][0])
    if reason is None:
        try:
            return _load_hub(key, kind, hub)
        except Exception as e:  # ImportError, offline and not cached, dataset moved, ...
            tried.append(f"HF hub: {type(e).__name__}: {e}")
    else:
        tried.append(f"HF hub: {reason}")
    raise RuntimeError(
        f"cannot load dataset {key!r}: " + "; ".join(tried)
        + f". Pass --data-dir DIR (or set ${DATA_ENV}) pointing at a folder with {files[0]}."
    )


def _hub_unreachable(repo_id: str) -> str | None:
    """Why the hub cannot serve dataset `repo_id` now, or None. Offline mode (``HF_HUB_OFFLINE``/
    ``HF_DATASETS_OFFLINE``) counts as usable: ``datasets`` then reads its local cache."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        return "the 'datasets' package is not installed"
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("HF_DATASETS_OFFLINE", ""))
    if any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags):
        return None
    from decodesearch.models import hub_problem

    return hub_problem(repo_id, repo_type="dataset")


def _field(rec: dict, *names: str):
    low = {k.lower(): v for k, v in rec.items()}
    for n in names:
        if n in low and low[n] is not None:
            return low[n]
    raise KeyError(f"none of the fields {names} in record with fields {sorted(rec)}")


def _load_hub(key: str, kind: str, sources) -> list[Problem]:
    """Named dataset from the HF hub (``datasets`` library); all sources of a name are concatenated
    for aime25 (parts I and II), the first that loads is used otherwise."""
    import datasets  # optional dependency

    probs: list[Problem] = []
    errors = []
    for repo, config, split in sources:
        try:
            ds = datasets.load_dataset(repo, config, split=split)
        except Exception as e:
            errors.append(f"{repo}: {type(e).__name__}: {e}")
            continue
        for i, rec in enumerate(ds):
            problem = str(_field(rec, "problem", "question"))
            answer = str(_field(rec, "answer")).strip()
            try:
                pid = str(_field(rec, "id", "unique_id"))
            except KeyError:
                pid = f"{key}-{config or ''}-{i:03d}".replace("--", "-")
            probs.append(Problem(pid, problem, answer, kind))
        if key != "aime25":
            break
    if not probs:
        raise RuntimeError("; ".join(errors) or "no records")
    return probs


# ---------------------------------------------------------------------------------------------
# Synthetic multi-step arithmetic word problems

_NAMES = ["Ava", "Ben", "Cleo", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena", "Milo", "Nora", "Omar", "Pia"]
_ITEMS = ["apples", "pencils", "marbles", "stickers", "cookies", "books", "shells", "coins", "cards", "eggs"]
_BOXES = ["box", "bag", "jar", "basket", "pack"]


def _arith_one(rng: random.Random) -> tuple[str, int]:
    """One problem with 2-3 steps of small-number arithmetic; the answer is a non-negative integer."""
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    box = rng.choice(_BOXES)
    t = rng.randrange(6)
    if t == 0:  # a + b - c
        a, b = rng.randint(3, 15), rng.randint(2, 10)
        c = rng.randint(1, a + b - 1)
        return (f"{name} has {a} {item}. {name} buys {b} more {item} and then gives {c} {item} to {other}. "
                f"How many {item} does {name} have now?", a + b - c)
    if t == 1:  # a * b + c
        a, b, c = rng.randint(2, 6), rng.randint(2, 9), rng.randint(1, 9)
        return (f"{name} has {a} {box}s with {b} {item} in each {box}, and {c} loose {item}. "
                f"How many {item} does {name} have in total?", a * b + c)
    if t == 2:  # a * b - c
        a, b = rng.randint(2, 6), rng.randint(2, 9)
        c = rng.randint(1, a * b - 1)
        return (f"Each of {a} friends brings {b} {item} to a party. They use {c} of the {item}. "
                f"How many {item} are left?", a * b - c)
    if t == 3:  # (a - b) * c
        b, c = rng.randint(1, 8), rng.randint(2, 5)
        a = b + rng.randint(1, 8)
        return (f"{name} had {a} {item} and lost {b} of them. {other} has {c} times as many {item} "
                f"as {name} has now. How many {item} does {other} have?", (a - b) * c)
    if t == 4:  # (a * b) / c with exact division, then + d
        c = rng.randint(2, 4)
        q = rng.randint(2, 6)
        a = rng.randint(2, 4)
        total = c * q * a  # a {box}s of (c*q) items each is a*c*q; share among c -> a*q each
        d = rng.randint(1, 6)
        return (f"{name} has {a} {box}s with {c * q} {item} in each {box}. {name} shares all the {item} "
                f"equally among {c} children, and then one child finds {d} more {item}. "
                f"How many {item} does that child have?", total // c + d)
    # t == 5: three steps a + b, times c, minus d
    a, b, c = rng.randint(1, 6), rng.randint(1, 6), rng.randint(2, 4)
    d = rng.randint(1, (a + b) * c - 1)
    return (f"{name} buys {a} red {item} and {b} blue {item} every day for {c} days. Then {name} gives "
            f"{d} {item} away. How many {item} does {name} have left?", (a + b) * c - d)


def make_arith(n: int, seed: int = 0) -> list[Problem]:
    """``n`` synthetic word problems (kind "aime": integer answers), ids ``arith{seed}-{i:04d}``.

    Deterministic: problem i depends only on (seed, i), so a larger ``n`` extends the list
    without changing earlier problems.
    """
    out = []
    for i in range(n):
        rng = random.Random(seed * 1_000_003 + i)
        text, ans = _arith_one(rng)
        out.append(Problem(f"arith{seed}-{i:04d}", text, str(ans), "aime"))
    return out
