"""Datasets, the JSONL results store (resume, kill, config mismatch, shards) and reports."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from decodesearch.bench import datasets as D
from decodesearch.bench.datasets import Problem, load_problems, make_arith
from decodesearch.bench.report import compare, format_compare, format_summary, plot, summarize
from decodesearch.bench.results import (
    config_diff,
    find_shards,
    merge_shards,
    open_results,
    read_results,
    shard_path,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"model": "tiny", "dataset": "arith", "strategy": "ids", "sampler": {"temperature": 0.7, "top_p": 1.0}, "seed": 0}


def rec(pid, correct=True, **kw):
    r = {"id": pid, "problem": f"problem {pid}", "gold": "1", "answer": "1" if correct else "2", "correct": correct,
         "samples": [], "tokens_generated": 10, "tokens_forwarded": 30, "wall_s": 0.5, "strategy": "ids"}
    r.update(kw)
    return r


def lines(path):
    return Path(path).read_text(encoding="utf-8").splitlines()


# ---------------------------------------------------------------------------------------------
# datasets


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def test_local_jsonl_and_limit(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"id": f"q{i}", "problem": f"1+{i}?", "answer": str(1 + i)} for i in range(5)] + [""])
    probs = load_problems(p)
    assert [x.id for x in probs] == ["q0", "q1", "q2", "q3", "q4"]
    assert probs[2] == Problem("q2", "1+2?", "3", "aime")  # all gold answers integers: the integer check
    assert len(load_problems(str(p), limit=2)) == 2
    assert {x.kind for x in load_problems(p, kind="math")} == {"math"}
    mixed = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "problem": "x", "answer": "1/2"},
                                               {"id": "b", "problem": "y", "answer": "3"},
                                               {"id": "c", "problem": "z", "answer": "4", "kind": "aime"}])
    assert [x.kind for x in load_problems(mixed)] == ["math", "math", "aime"]  # a record's own kind wins
    with pytest.raises(ValueError, match="kind='int' is not accepted; choose one of auto, math, aime"):
        load_problems(mixed, kind="int")


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"id": "q2", "problem": "x", "answer": ', "invalid JSON"),
        ('{"id": "q2", "problem": "x"}', "missing field 'answer'"),
        ('["q2", "x", "1"]', "expected a JSON object"),
        ('{"id": "q2", "problem": "", "answer": "1"}', "field 'problem'"),
        ('{"id": "q0", "problem": "x", "answer": "1"}', "duplicate id 'q0'"),
        ('{"id": "q2", "problem": "x", "answer": "1", "kind": "gsm"}', "field 'kind'"),
    ],
)
def test_malformed_dataset_line_names_line_number(tmp_path, bad, message):
    p = write_jsonl(tmp_path / "bad.jsonl", [{"id": "q0", "problem": "a", "answer": "1"}, "", bad])
    with pytest.raises(ValueError) as e:
        load_problems(p)
    assert "bad.jsonl:3:" in str(e.value) and message in str(e.value)


def test_named_datasets_from_data_dir_and_env(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "aime24.jsonl", [{"id": "2024-I-1", "problem": "p", "answer": "204"}])
    write_jsonl(tmp_path / "math500.jsonl", [{"id": "m0", "problem": "p", "answer": r"\frac12"}])
    monkeypatch.delenv(D.DATA_ENV, raising=False)
    assert load_problems("aime24", data_dir=tmp_path) == [Problem("2024-I-1", "p", "204", "aime")]
    assert load_problems("AIME2024", data_dir=tmp_path)[0].kind == "aime"
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path))
    assert load_problems("math500")[0] == Problem("m0", "p", r"\frac12", "math")


def test_named_dataset_unavailable_says_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(D.DATA_ENV, raising=False)
    monkeypatch.setattr(D, "_hub_unreachable", lambda *a, **k: "offline (test)")
    with pytest.raises(RuntimeError) as e:
        load_problems("aime25", data_dir=tmp_path)
    msg = str(e.value)
    assert "--data-dir" in msg and "aime2025.jsonl" in msg and "offline (test)" in msg
    with pytest.raises(FileNotFoundError, match="neither a file"):
        load_problems(tmp_path / "nope.jsonl")


def test_arith_deterministic_by_seed():
    a = load_problems("arith", limit=30, seed=1)
    assert a == load_problems("arith", limit=30, seed=1)
    assert a != load_problems("arith", limit=30, seed=2)
    assert load_problems("arith", limit=5, seed=1) == a[:5]  # prefix-stable
    assert len({p.id for p in a}) == 30 and all(p.kind == "aime" for p in a)
    assert all(int(p.answer) >= 0 and str(int(p.answer)) == p.answer for p in a)
    assert len(load_problems("arith")) == D.ARITH_DEFAULT_N
    assert all(len(p.problem) < 300 for p in make_arith(200, seed=3))
    # several templates are in use
    assert len({p.problem.split()[1] for p in make_arith(60)}) > 3


# ---------------------------------------------------------------------------------------------
# results store


def test_write_then_resume(tmp_path):
    out = tmp_path / "run.jsonl"
    with open_results(out, CONFIG) as rf:
        assert rf.finished == []
        for i in range(3):
            rf.append(rec(f"q{i}"))
        with pytest.raises(ValueError, match="already in the file"):
            rf.append(rec("q1"))
    header = json.loads(lines(out)[0])
    assert header["config"] == CONFIG and header["decodesearch_results"] == 1
    with open_results(out, dict(CONFIG)) as rf:
        assert rf.finished == ["q0", "q1", "q2"] and "q1" in rf
        rf.append(rec("q3"))
    cfg, records = read_results(out)
    assert cfg == CONFIG and [r["id"] for r in records] == ["q0", "q1", "q2", "q3"]


KILLER = textwrap.dedent(
    """
    import os, signal, sys, json
    sys.path.insert(0, {repo!r})
    from decodesearch.bench.results import open_results
    cfg = json.loads(sys.argv[2])
    rf = open_results(sys.argv[1], cfg)
    todo = [f"q{{i}}" for i in range(10) if f"q{{i}}" not in rf]
    for n, pid in enumerate(todo):
        if n == 4:  # killed in the middle of writing the 5th record of this run
            line = json.dumps({{"id": pid, "correct": True, "problem": "x" * 100}})
            rf._fh.write(line[: len(line) // 2].encode())
            rf._fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        rf.append({{"id": pid, "correct": True, "problem": "x" * 100}})
    rf.close()
    """
)


def test_resume_after_kill_mid_write(tmp_path):
    out = tmp_path / "run.jsonl"
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(repo=str(REPO)))
    r = subprocess.run([sys.executable, str(script), str(out), json.dumps(CONFIG)], capture_output=True)
    assert r.returncode == -9, r.stderr.decode()
    raw = out.read_bytes()
    assert not raw.endswith(b"\n")  # a torn last line
    good = raw[: raw.rindex(b"\n") + 1]
    cfg, recs = read_results(out)  # readers ignore the torn line
    assert [x["id"] for x in recs] == ["q0", "q1", "q2", "q3"]
    # Resume: the torn line is dropped, nothing before it changes.
    rf = open_results(out, CONFIG)
    assert rf.finished == ["q0", "q1", "q2", "q3"]
    assert out.read_bytes() == good
    rf.close()
    # A second killed run, then a clean one finishing the job.
    r = subprocess.run([sys.executable, str(script), str(out), json.dumps(CONFIG)], capture_output=True)
    assert r.returncode == -9
    with open_results(out, CONFIG) as rf:
        assert rf.finished == [f"q{i}" for i in range(8)]
        for i in range(8, 10):
            rf.append({"id": f"q{i}", "correct": True, "problem": "x" * 100})
    ids = [json.loads(line)["id"] for line in lines(out)[1:]]
    assert ids == [f"q{i}" for i in range(10)]  # nothing lost, no duplicates


def test_unterminated_complete_last_record_is_kept(tmp_path):
    out = tmp_path / "run.jsonl"
    with open_results(out, CONFIG) as rf:
        rf.append(rec("q0"))
    with open(out, "ab") as f:
        f.write(json.dumps(rec("q1")).encode())  # complete, but the newline never landed
    with open_results(out, CONFIG) as rf:
        assert rf.finished == ["q0", "q1"]
        rf.append(rec("q2"))
    assert [r["id"] for r in read_results(out)[1]] == ["q0", "q1", "q2"]


def test_partial_header_only_restarts(tmp_path):
    out = tmp_path / "run.jsonl"
    out.write_bytes(b'{"decodesearch_results": 1, "conf')
    with open_results(out, CONFIG) as rf:
        assert rf.finished == []
    assert read_results(out) == (CONFIG, [])


def test_config_mismatch_refused_and_file_untouched(tmp_path):
    out = tmp_path / "run.jsonl"
    with open_results(out, CONFIG) as rf:
        rf.append(rec("q0"))
    before = out.read_bytes()
    other = json.loads(json.dumps(CONFIG))
    other["sampler"]["temperature"] = 1.0
    other["strategy"] = "rain"
    other["new_knob"] = 3
    with pytest.raises(ValueError) as e:
        open_results(out, other)
    msg = str(e.value)
    assert "sampler.temperature: file has 0.7, this run has 1.0" in msg
    assert "strategy" in msg and "new_knob" in msg and "model" not in msg
    assert out.read_bytes() == before
    # keys that should not block a resume can be ignored
    with open_results(out, {**CONFIG, "limit": 5}, ignore_keys=["limit"]) as rf:
        assert rf.finished == ["q0"]
    assert config_diff({"a": (1, 2)}, {"a": [1, 2]}) == []
    # a file from before `settings` was recorded resumes; one that records them is compared on them
    with open_results(out, {**CONFIG, "settings": {"n": 4}}) as rf:
        assert rf.finished == ["q0"]
    assert config_diff({"settings": {"n": 4}}, {"settings": {"n": 5}}) == ["settings.n: file has 4, this run has 5"]


def test_corrupt_files_refused_untouched(tmp_path):
    out = tmp_path / "run.jsonl"
    with open_results(out, CONFIG) as rf:
        rf.append(rec("q0"))
        rf.append(rec("q1"))
    data = out.read_bytes().replace(b'"id": "q0"', b'"id": q0"')
    out.write_bytes(data)
    with pytest.raises(ValueError, match=r"run.jsonl:2: corrupt line"):
        open_results(out, CONFIG)
    assert out.read_bytes() == data
    other = tmp_path / "other.jsonl"
    other.write_text('{"id": "x", "problem": "p", "answer": "1"}\n')
    with pytest.raises(ValueError, match="not a decodesearch results file"):
        open_results(other, CONFIG)
    assert other.read_text() == '{"id": "x", "problem": "p", "answer": "1"}\n'
    notes = tmp_path / "notes.jsonl"
    notes.write_text("hello")  # one unterminated non-JSON line: not a torn header of ours
    with pytest.raises(ValueError, match="not a decodesearch results file"):
        open_results(notes, CONFIG)
    assert notes.read_text() == "hello"
    # a complete (parseable) last line that is not a record is an error, not a torn write to drop
    good = tmp_path / "good.jsonl"
    with open_results(good, CONFIG) as rf:
        rf.append(rec("q0"))
    with open(good, "ab") as f:
        f.write(b'{"no_id": 1}')
    before = good.read_bytes()
    with pytest.raises(ValueError, match="string 'id'"):
        open_results(good, CONFIG)
    assert good.read_bytes() == before


def test_unserialisable_record_writes_nothing_and_second_writer_refused(tmp_path):
    out = tmp_path / "run.jsonl"
    with open_results(out, CONFIG) as rf:
        size = out.stat().st_size
        with pytest.raises(TypeError):
            rf.append({"id": "q0", "bad": object()})
        assert out.stat().st_size == size
        with pytest.raises(ValueError, match="string 'id'"):
            rf.append({"no_id": 1})
        if os.name == "posix":
            with pytest.raises(RuntimeError, match="another process"):
                open_results(out, CONFIG)
        rf.append(rec("q0"))
    assert [r["id"] for r in read_results(out)[1]] == ["q0"]


def test_merge_shards(tmp_path):
    out = tmp_path / "run.jsonl"
    assert shard_path(out, 1) == tmp_path / "run.rank1.jsonl"
    with open_results(shard_path(out, 0), CONFIG) as rf:
        for pid in ("q0", "q2", "q4"):
            rf.append(rec(pid))
    with open_results(shard_path(out, 1), CONFIG) as rf:
        for pid in ("q1", "q3"):
            rf.append(rec(pid))
    with open(shard_path(out, 1), "ab") as f:
        f.write(b'{"id": "q5", "corr')  # rank 1 was killed mid-write
    assert find_shards(out) == [shard_path(out, 0), shard_path(out, 1)]
    order = [f"q{i}" for i in range(6)]
    assert merge_shards(out, CONFIG, world_size=2, order=order) == 5
    assert [r["id"] for r in read_results(out)[1]] == ["q0", "q1", "q2", "q3", "q4"]
    assert merge_shards(out, CONFIG) == 0  # idempotent
    bad = json.loads(json.dumps(CONFIG))
    bad["seed"] = 1
    with open_results(shard_path(out, 2), bad) as rf:
        rf.append(rec("q9"))
    with pytest.raises(ValueError, match=r"rank2.*\n.*seed"):
        merge_shards(out, CONFIG)
    shard_path(out, 2).unlink()
    with pytest.raises(FileNotFoundError):
        merge_shards(out, CONFIG, world_size=3)
    merge_shards(out, CONFIG, world_size=2, remove=True)
    assert find_shards(out) == []


# ---------------------------------------------------------------------------------------------
# report


def sample(answer, correct, before=(), cbefore=None):
    s = {"text": f"... \\boxed{{{answer}}}", "answer": answer, "correct": correct, "answers_before_triggers": list(before)}
    if cbefore is not None:
        s["correct_before_triggers"] = list(cbefore)
    return s


def test_summarize_hand_computed(tmp_path):
    out = tmp_path / "ids.jsonl"
    with open_results(out, {**CONFIG, "kind": "aime"}) as rf:
        # q0: samples 1 (right), 2, 2 -> maj wrong; before/after pairs: (F,T) then (T,F)... see below
        rf.append(rec("q0", True, gold="1", samples=[
            sample("1", True, before=[None, "1"]),  # stages F, T, T -> pairs (F,T), (T,T)
            sample("2", False, before=["2"]),  # stages F, F -> (F,F)
            sample("2", False),
        ], tokens_generated=30, tokens_forwarded=90, wall_s=1.0))
        rf.append(rec("q1", False, gold="7", samples=[
            sample("3", False, before=["7"], cbefore=[True]),  # (T,F)
            sample("4", False),
            sample("7", True),
        ], tokens_generated=10, tokens_forwarded=50, wall_s=3.0))
    s = summarize(out)
    assert (s["n"], s["n_correct"], s["accuracy"]) == (2, 1, 0.5)
    assert s["samples_per_problem"] == 3
    assert s["pass@k"][1] == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert s["pass@k"][2] == pytest.approx(2 / 3)  # 1 - C(2,2)/C(3,2) for each
    assert s["pass@k"][3] == pytest.approx(1.0)
    assert s["maj@k"] == {1: 0.5, 2: 0.5, 3: 0.0}  # q0: "1"|tie->"1"|"2"; q1: "3" wrong, tie "3", 3-way tie "3"
    assert s["mean_tokens_generated"] == 20 and s["mean_tokens_forwarded"] == 70
    assert s["wall_s"] == 4.0 and s["tokens_per_s"] == pytest.approx(40 / 4.0)
    sc = s["self_correction"]
    # q0 pairs (F,T),(T,T),(F,F): a=1/3, b=2/3, ab=1/3, nb=1/3 ; q1 pair (T,F): a=1, b=0, ab=0
    assert sc["acc1"] == pytest.approx((1 / 3 + 1) / 2)
    assert sc["acc2"] == pytest.approx((2 / 3 + 0) / 2)
    assert sc["cl"] == pytest.approx((1 / 3) / (4 / 3))
    assert sc["cs"] == pytest.approx((1 / 3) / (2 / 3))
    assert sc["n_pairs"] == 4 and sc["n_questions"] == 2
    # Per trigger index: trigger 0 pairs q0 (F,T),(F,F), q1 (T,F); trigger 1 only q0's (T,T).
    t0, t1 = s["self_correction_by_trigger"]
    assert (t0["n_pairs"], t0["acc1"], t0["acc2"]) == (3, pytest.approx((0 + 1) / 2), pytest.approx((1 / 2 + 0) / 2))
    assert (t1["n_pairs"], t1["n_questions"], t1["acc1"], t1["cl"]) == (1, 1, 1.0, 1.0)
    table = format_summary(s)
    for word in ("accuracy", "50.0% (1/2)", "pass@2", "maj@3", "CL (confidence level)", "RSS", "tokens/s"):
        assert word in table


def test_first_k_samples_votes_and_sums_tokens_over_the_first_k():
    """Self-consistency with k of a run's samples: the vote, the oracle and the tokens of the first k."""
    from decodesearch.bench.report import first_k_samples

    def s(answer, correct, tokens):
        return {**sample(answer, correct), "tokens_generated": tokens}

    records = [rec("q0", True, gold="1", samples=[s("2", False, 5), s("1", True, 7), s("1", True, 9)], tokens_generated=21),
               rec("q1", False, gold="7", samples=[s("7", True, 4)], tokens_generated=4)]
    two = first_k_samples(records, 2)
    assert [r["id"] for r in two] == ["q0"]  # q1 has one sample only
    assert two[0]["correct"] is False and two[0]["tokens_generated"] == 12  # tie "2" vs "1": first wins
    assert first_k_samples(records, 2, rule="oracle")[0]["correct"] is True
    three = first_k_samples(records, 3)[0]
    assert three["correct"] is True and three["tokens_generated"] == 21 and len(three["samples"]) == 3
    assert summarize(first_k_samples(records, 1))["accuracy"] == 0.5
    with pytest.raises(ValueError, match="rule"):
        first_k_samples(records, 1, rule="best")


def test_summarize_weighted_at_k(tmp_path):
    """weighted@k votes by the samples' scores; it is reported only when every sample has one."""
    def scored(answer, correct, score):
        return {**sample(answer, correct), "score": score}

    out = tmp_path / "bon.jsonl"
    with open_results(out, {**CONFIG, "kind": "aime"}) as rf:
        # q0: two low-scored "2" (wrong) outvote one "1" (right) by count, not by score.
        rf.append(rec("q0", True, gold="1", samples=[scored("2", False, 0.1), scored("1", True, 0.9),
                                                     scored("2", False, 0.2)]))
        # q1: "5" (right) leads on count and on score.
        rf.append(rec("q1", True, gold="5", samples=[scored("5", True, 0.5), scored("5", True, 0.5),
                                                     scored("6", False, 0.6)]))
    s = summarize(out)
    assert s["maj@k"][3] == 0.5 and s["weighted@k"][3] == 1.0
    assert s["weighted@k"][1] == 0.5  # first sample only: q0 "2" wrong, q1 "5" right
    assert s["weighted@k"][2] == 1.0  # q0: 0.9 > 0.1; q1: "5" 1.0
    assert "weighted@3" in format_summary(s)
    unscored = tmp_path / "plain.jsonl"
    with open_results(unscored, {**CONFIG, "kind": "aime"}) as rf:
        rf.append(rec("q0", True, gold="1", samples=[sample("1", True), scored("1", True, 0.3)]))
    assert summarize(unscored)["weighted@k"] == {}


def _run_file(path, flags, strategy="sampling", tokens=100):
    with open_results(path, {**CONFIG, "strategy": strategy}, fsync=False) as rf:
        for i, c in enumerate(flags):
            rf.append(rec(f"q{i}", bool(c), strategy=strategy, tokens_generated=tokens))
    return path


def test_compare_bootstrap_sanity(tmp_path):
    import random

    rng = random.Random(0)
    n = 200
    fa = [rng.random() < 0.4 for _ in range(n)]
    fb = [x or (rng.random() < 0.25) for x in fa]  # b fixes some of a's misses, never breaks
    a = _run_file(tmp_path / "a.jsonl", fa)
    b = _run_file(tmp_path / "b.jsonl", fb, strategy="ids")
    r = compare(a, b, n_boot=2000, seed=0)
    diff = (sum(fb) - sum(fa)) / n
    assert r["n_common"] == n and r["diff"] == pytest.approx(diff)
    lo, hi = r["ci"]
    assert lo <= diff <= hi and lo >= 0.0  # paired: b never worse, so the CI cannot go below 0
    # width close to the normal approximation 2 * 1.96 * sd(d) / sqrt(n)
    d = [int(y) - int(x) for x, y in zip(fa, fb)]
    m = sum(d) / n
    sd = (sum((x - m) ** 2 for x in d) / (n - 1)) ** 0.5
    assert (hi - lo) == pytest.approx(2 * 1.96 * sd / n ** 0.5, rel=0.25)
    assert compare(a, b, n_boot=2000, seed=0)["ci"] == r["ci"]  # seeded
    same = compare(a, a, n_boot=500)
    assert same["diff"] == 0.0 and same["ci"] == (0.0, 0.0)
    text = format_compare(r)
    assert "paired accuracy difference (b - a) on 200 common problems" in text and "95% CI" in text
    # partially overlapping runs pair on common ids only
    c = _run_file(tmp_path / "c.jsonl", fb[:50])
    assert compare(a, c, n_boot=100)["n_common"] == 50 and compare(a, c, n_boot=100)["only_a"] == 150


def test_plot_writes_png(tmp_path):
    runs = [
        _run_file(tmp_path / "s1.jsonl", [1, 0, 0, 0], "sampling", 100),
        _run_file(tmp_path / "s4.jsonl", [1, 1, 0, 0], "sampling", 400),
        _run_file(tmp_path / "ids.jsonl", [1, 1, 1, 0], "ids", 300),
    ]
    png = plot(runs, tmp_path / "out" / "curve.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
