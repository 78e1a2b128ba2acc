"""Summaries, paired comparisons and test-time-scaling plots of results files (see ``results``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence, Union

from decodesearch.bench.results import read_results
from decodesearch.scoring.answers import CHECK_TIMEOUT_S, check_answer, normalize_answer
from decodesearch.scoring.metrics import maj_at_k, mean_pass_at_k, self_correction_metrics, weighted_at_k

__all__ = ["summarize", "format_summary", "print_summary", "compare", "format_compare", "plot", "correction_pairs",
           "first_k_samples"]

#: A run: a results-file path, a ``(config, records)`` pair, or a list of records.
Run = Union[str, os.PathLike, tuple, list]


def _load(run: Run) -> tuple[str, dict, list[dict]]:
    if isinstance(run, (str, os.PathLike)):
        config, records = read_results(run)
        return Path(run).stem, config, records
    if isinstance(run, tuple) and len(run) == 2 and isinstance(run[0], dict):
        return "run", run[0], list(run[1])
    if isinstance(run, list):
        return "run", {}, run
    raise TypeError(f"expected a results path, (config, records) or a list of records, got {type(run).__name__}")


def _strategy(config: dict, records: list[dict]) -> str | None:
    s = config.get("strategy")
    if isinstance(s, dict):
        s = s.get("name")
    if s is None and records:
        s = records[0].get("strategy")
    return None if s is None else str(s)


def _ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, plus n itself."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if n >= 1 and ks[-1] != n:
        ks.append(n)
    return ks


def correction_pairs(record: dict, kind: str = "math", mode: str = "consecutive",
                     timeout_s: float | None = CHECK_TIMEOUT_S, trigger: int | None = None) -> list[tuple[bool, bool]]:
    """``(correct_before, correct_after)`` pairs of one record's samples, for CL/CS/RSS.

    A sample's stages are its answers before each trigger, then its final answer; their
    correctness comes from ``correct_before_triggers`` (else checked here against ``gold``)
    and ``correct``. ``mode="consecutive"``: one pair per trigger (stage t -> stage t+1, each
    trigger is one self-correction round); ``"first_last"``: one pair per sample (before the
    first trigger -> final). Samples without triggers give no pairs. A None answer is wrong.
    ``trigger=t`` (consecutive mode): only the pair around the t-th trigger (0-based) of each sample
    that has one.
    """
    if mode not in ("consecutive", "first_last"):
        raise ValueError(f"mode must be 'consecutive' or 'first_last', got {mode!r}")
    pairs: list[tuple[bool, bool]] = []
    kind = record.get("kind", kind)
    for s in record.get("samples") or []:
        before = s.get("answers_before_triggers") or []
        if not before:
            continue
        cb = s.get("correct_before_triggers")
        if cb is None or len(cb) != len(before):
            cb = [check_answer(a, record["gold"], kind, timeout_s=timeout_s) for a in before]
        stages = [bool(c) for c in cb] + [bool(s.get("correct"))]
        if mode == "first_last":
            pairs.append((stages[0], stages[-1]))
        elif trigger is not None:
            if trigger < len(before):
                pairs.append((stages[trigger], stages[trigger + 1]))
        else:
            pairs.extend(zip(stages[:-1], stages[1:]))
    return pairs


def summarize(
    run: Run,
    ks: Sequence[int] | None = None,
    vote_key: Callable[[Any], Any] | None = normalize_answer,
    pairs_mode: str = "consecutive",
) -> dict:
    """Metrics of one run (a results path, ``(config, records)`` or a record list).

    Keys: ``name``, ``strategy``, ``n`` (problems), ``n_correct``, ``accuracy`` (share of records
    with ``correct``), ``errors`` (records with an ``error``), ``samples_per_problem`` (min over
    problems with samples, or 0), ``pass@k`` and ``maj@k`` (dicts k -> value, over problems with
    samples, for k in ``ks`` or 1, 2, 4, ... and the minimum sample count; maj@k votes over
    the first k samples' answers grouped by ``vote_key``, default ``normalize_answer``),
    ``weighted@k`` (the same with each vote weighted by the sample's ``score``; empty unless every
    sample has one: best-of-N with a scorer, beam search, DVTS),
    ``mean_tokens_generated``, ``mean_tokens_forwarded`` (per problem), ``wall_s`` (sum),
    ``mean_wall_s``, ``tokens_per_s`` (tokens generated / wall seconds), and
    ``self_correction`` (dict acc1, acc2, cl, cs, rss, n_questions, n_pairs; None when no
    sample has ``answers_before_triggers``; see ``correction_pairs`` and
    ``self_correction_metrics``) and ``self_correction_by_trigger`` (the same per trigger index:
    the pairs around trigger 0, 1, ...; empty without triggers). Undefined values are None.
    """
    name, config, records = _load(run)
    n = len(records)
    default_kind = config.get("kind", "math") if isinstance(config.get("kind"), str) else "math"
    n_correct = sum(1 for r in records if r.get("correct"))
    out: dict[str, Any] = {
        "name": name,
        "strategy": _strategy(config, records),
        "n": n,
        "n_correct": n_correct,
        "accuracy": n_correct / n if n else None,
        "errors": sum(1 for r in records if r.get("error")),
    }
    with_samples = [r for r in records if r.get("samples")]
    n_min = min((len(r["samples"]) for r in with_samples), default=0)
    out["samples_per_problem"] = n_min
    pk: dict[int, float] = {}
    mk: dict[int, float] = {}
    wk: dict[int, float] = {}
    scored = bool(with_samples) and all(isinstance(s.get("score"), (int, float)) and not isinstance(s.get("score"), bool)
                                        for r in with_samples for s in r["samples"])
    if n_min:
        answers = [[s.get("answer") for s in r["samples"]] for r in with_samples]
        correct = [[bool(s.get("correct")) for s in r["samples"]] for r in with_samples]
        counts = [(len(c), sum(c)) for c in correct]
        for k in (ks if ks is not None else _ks(n_min)):
            if not 1 <= k <= n_min:
                continue
            pk[k] = mean_pass_at_k(counts, k)
            hits = [maj_at_k(a, c, k, key=vote_key) for a, c in zip(answers, correct)]
            mk[k] = sum(hits) / len(hits)
            if scored:
                scores = [[s["score"] for s in r["samples"]] for r in with_samples]
                hits = [weighted_at_k(a, c, w, k, key=vote_key) for a, c, w in zip(answers, correct, scores)]
                wk[k] = sum(hits) / len(hits)
    out["pass@k"] = pk
    out["maj@k"] = mk
    out["weighted@k"] = wk

    def mean(field):
        vals = [r[field] for r in records if isinstance(r.get(field), (int, float))]
        return sum(vals) / len(vals) if vals else None

    out["mean_tokens_generated"] = mean("tokens_generated")
    out["mean_tokens_forwarded"] = mean("tokens_forwarded")
    walls = [r["wall_s"] for r in records if isinstance(r.get("wall_s"), (int, float))]
    out["wall_s"] = sum(walls) if walls else None
    out["mean_wall_s"] = sum(walls) / len(walls) if walls else None
    gen = sum(r.get("tokens_generated") or 0 for r in records if isinstance(r.get("wall_s"), (int, float)))
    out["tokens_per_s"] = gen / out["wall_s"] if walls and out["wall_s"] > 0 else None
    has_triggers = any(s.get("answers_before_triggers") for r in records for s in (r.get("samples") or []))
    if has_triggers:
        pairs = [correction_pairs(r, default_kind, pairs_mode) for r in records]
        out["self_correction"] = self_correction_metrics(pairs).as_dict()
        most = max(len(s.get("answers_before_triggers") or []) for r in records for s in (r.get("samples") or []))
        out["self_correction_by_trigger"] = [
            self_correction_metrics([correction_pairs(r, default_kind, trigger=t) for r in records]).as_dict()
            for t in range(most)]
    else:
        out["self_correction"] = None
        out["self_correction_by_trigger"] = []
    return out


def first_k_samples(run: Run, k: int, rule: str = "majority", vote_key: Callable[[Any], Any] | None = normalize_answer
                    ) -> list[dict]:
    """The records the run would have had with only each problem's first ``k`` samples: ``samples``
    and ``tokens_generated`` cut to them, and ``correct`` decided by ``rule``: ``"majority"`` (the
    vote of `maj_at_k`: self-consistency with k samples) or ``"oracle"`` (any of them correct: pass@k,
    which no strategy can pick). For a test-time-scaling curve at matched tokens from one run with
    many samples. Records with fewer than ``k`` samples are left out."""
    if rule not in ("majority", "oracle"):
        raise ValueError(f"rule={rule!r} is out of range; accepted: 'majority' or 'oracle'")
    _, _, records = _load(run)
    out = []
    for r in records:
        samples = (r.get("samples") or [])[:k]
        if k < 1 or len(samples) < k:
            continue
        correct = [bool(s.get("correct")) for s in samples]
        hit = any(correct) if rule == "oracle" else maj_at_k([s.get("answer") for s in samples], correct, k, key=vote_key)
        out.append({**r, "samples": samples, "correct": hit,
                    "tokens_generated": sum(s.get("tokens_generated") or 0 for s in samples),
                    "strategy": f"{r.get('strategy')} ({'majority' if rule == 'majority' else 'pass@k, oracle'})"})
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x, digits=1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return f"{x:,.{digits}f}"


def _rows(s: dict) -> list[tuple[str, str]]:
    rows = [
        ("strategy", s.get("strategy") or "-"),
        ("problems", str(s["n"])),
        ("accuracy", f"{_pct(s['accuracy'])} ({s['n_correct']}/{s['n']})"),
    ]
    if s.get("errors"):
        rows.append(("errors", str(s["errors"])))
    if s.get("samples_per_problem"):
        rows.append(("samples/problem", str(s["samples_per_problem"])))
    for k, v in s.get("pass@k", {}).items():
        rows.append((f"pass@{k}", _pct(v)))
    for k, v in s.get("maj@k", {}).items():
        rows.append((f"maj@{k}", _pct(v)))
    for k, v in s.get("weighted@k", {}).items():
        rows.append((f"weighted@{k}", _pct(v)))
    rows += [
        ("mean tokens generated", _num(s.get("mean_tokens_generated"))),
        ("mean tokens forwarded", _num(s.get("mean_tokens_forwarded"))),
        ("wall time (s)", _num(s.get("wall_s"))),
        ("mean wall/problem (s)", _num(s.get("mean_wall_s"), 2)),
        ("tokens/s (generated)", _num(s.get("tokens_per_s"))),
    ]
    sc = s.get("self_correction")
    if sc:
        rows += [
            ("Acc1 -> Acc2", f"{_pct(sc['acc1'])} -> {_pct(sc['acc2'])}"),
            ("CL (confidence level)", _num(sc["cl"], 3)),
            ("CS (critique score)", _num(sc["cs"], 3)),
            ("RSS", _num(sc["rss"], 3)),
            ("correction pairs", f"{sc['n_pairs']} over {sc['n_questions']} problems"),
        ]
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def format_summary(summary: dict) -> str:
    """The summary as a two-column text table."""
    return _table(("metric", summary.get("name", "run")), _rows(summary))


def print_summary(run: Run, **kw) -> dict:
    """Summarise ``run`` (see ``summarize``), print the table, return the summary."""
    s = summarize(run, **kw)
    print(format_summary(s))
    return s


def compare(a: Run, b: Run, n_boot: int = 10_000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Side-by-side summaries and the paired accuracy difference ``b - a`` with a bootstrap CI.

    Pairing is by problem id over the ids present in both runs (``n_common``; ``only_a`` /
    ``only_b`` count the rest). The CI resamples the common problems with replacement
    ``n_boot`` times (numpy generator seeded with ``seed``) and takes the central
    ``confidence`` percentile interval of the mean difference. Returns keys ``a``, ``b``
    (summaries), ``n_common``, ``only_a``, ``only_b``, ``acc_a``, ``acc_b`` (on common ids),
    ``diff``, ``ci`` ((low, high) or None when nothing is common), ``n_boot``, ``seed``,
    ``confidence``.
    """
    import numpy as np

    na, ca, ra = _load(a)
    nb, cb, rb = _load(b)
    sa, sb = summarize((ca, ra)), summarize((cb, rb))
    sa["name"], sb["name"] = na, nb
    if na == nb:
        sa["name"], sb["name"] = f"{na} (a)", f"{nb} (b)"
    da = {r["id"]: bool(r.get("correct")) for r in ra}
    db = {r["id"]: bool(r.get("correct")) for r in rb}
    common = [pid for pid in da if pid in db]
    out: dict[str, Any] = {
        "a": sa, "b": sb, "n_common": len(common),
        "only_a": len(da) - len(common), "only_b": len(db) - len(common),
        "n_boot": n_boot, "seed": seed, "confidence": confidence,
    }
    if not common:
        out.update(acc_a=None, acc_b=None, diff=None, ci=None)
        return out
    xa = np.array([da[p] for p in common], dtype=np.float64)
    xb = np.array([db[p] for p in common], dtype=np.float64)
    d = xb - xa
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    boots = d[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boots, [alpha, 1.0 - alpha])
    out.update(acc_a=float(xa.mean()), acc_b=float(xb.mean()), diff=float(d.mean()), ci=(float(lo), float(hi)))
    return out


def format_compare(result: dict) -> str:
    """``compare``'s result as text: the two summaries side by side, then the paired difference."""
    ra, rb = dict(_rows(result["a"])), dict(_rows(result["b"]))
    keys = list(ra) + [k for k in rb if k not in ra]
    table = _table(("metric", result["a"]["name"], result["b"]["name"]), [(k, ra.get(k, "-"), rb.get(k, "-")) for k in keys])
    if result["diff"] is None:
        tail = "no problem ids in common: no paired difference"
    else:
        lo, hi = result["ci"]
        tail = (
            f"paired accuracy difference (b - a) on {result['n_common']} common problems: "
            f"{100 * result['diff']:+.1f} pts, {100 * result['confidence']:.0f}% CI "
            f"[{100 * lo:+.1f}, {100 * hi:+.1f}] (bootstrap, {result['n_boot']} resamples, seed {result['seed']})"
        )
        if result["only_a"] or result["only_b"]:
            tail += f"; not paired: {result['only_a']} only in a, {result['only_b']} only in b"
    return table + "\n" + tail


def plot(paths: Sequence[Run], out_png: str | os.PathLike, labels: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Accuracy vs mean tokens generated per problem, one point per run; write a PNG.

    Runs of the same strategy are joined by a line in order of tokens (a test-time scaling
    curve over budgets); each point is labelled with its run name (``labels[i]`` or the file
    stem). The x axis is logarithmic when the token range spans more than 20x. Uses
    matplotlib's Agg canvas directly (no global backend change). Returns the PNG path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} runs")
    points: dict[str, list[tuple[float, float, str]]] = {}
    for i, run in enumerate(paths):
        s = summarize(run)
        label = labels[i] if labels is not None else s["name"]
        x, y = s["mean_tokens_generated"], s["accuracy"]
        if x is None or y is None:
            continue
        points.setdefault(s["strategy"] or label, []).append((float(x), 100.0 * y, label))
    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs_all = [p[0] for pts in points.values() for p in pts]
    for group, pts in points.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=group)
        for x, y, lab in pts:
            ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("mean tokens generated per problem")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "accuracy vs test-time compute")
    ax.grid(True, alpha=0.3)
    if points:
        ax.legend(fontsize=8)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
