"""The GPU kernel benchmark works before GPU time is spent on it: its --smoke mode runs the same code
on CPU under the Triton interpreter at toy sizes (timings are not checked: they mean nothing)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_speed.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_kernels_benchmark_smoke(tmp_path):
    out = tmp_path / "kernels_smoke.json"
    proc = _run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True
    forks = report["sizes"]["forks"]
    assert [r["fork_rows"] for r in report["kv_copy"]["results"]] == forks
    assert all("skipped" not in r and r["bytes_moved"] > 0 for r in report["kv_copy"]["results"])
    assert [r["batch"] for r in report["score"]] == report["sizes"]["batches"]
    assert "kv_copy" in proc.stdout and "score" in proc.stdout


def test_kernels_benchmark_smoke_never_overwrites_the_reference():
    proc = _run("--smoke")
    assert proc.returncode == 2
    assert "--smoke needs --out" in proc.stderr


def test_throughput_benchmark_smoke(tiny_dir, tmp_path):
    """benchmarks/throughput.py end to end at toy sizes: every route runs and the ratios are written."""
    out = tmp_path / "throughput_smoke.json"
    script = SCRIPT.parent / "throughput.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--model", tiny_dir, "--dtype", "float32",
                           "--problems", "5", "--serial-problems", "2", "--max-tokens", "6", "--hf-batch", "2",
                           "--hf-sample-batch", "2", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True and set(report["runs"]) == {"greedy", "sampling", "ids"}
    assert report["greedy"]["agreement_with_hf"]["of"] == 5
    for rows in report["runs"].values():
        assert all(r["tokens_generated"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert "ratio" in proc.stdout


def test_gpu_check_smoke(tmp_path):
    """benchmarks/gpu_check.sh --smoke: every stage of the GPU check runs on CPU (Triton interpreter,
    toy sizes), writes its JSON, and the summary reports each stage as passed."""
    import os

    root = SCRIPT.parents[1]
    out = tmp_path / "gpu_check"
    env = dict(os.environ, OUT=str(out))
    env.pop("DECODESEARCH_KERNELS", None)
    proc = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), "--smoke"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for name in ("device", "kernel_tests", "engine", "kernels", "throughput", "summary"):
        assert json.loads((out / f"{name}.json").read_text()), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["smoke"] is True and summary["all_passed"] is True
    status = {s["stage"]: s["status"] for s in summary["stages"]}
    assert status == {"install": "skipped", "model": "ok", "device": "ok", "kernel_tests": "ok", "engine": "ok", "kernels": "ok",
                      "throughput": "ok"}
    kt = json.loads((out / "kernel_tests.json").read_text())
    assert kt["passed"] > 50 and kt["failures"] == 0 and kt["mode"] == "cpu, triton interpreter"
    engine = json.loads((out / "engine.json").read_text())
    assert engine["kernel_backend"] == "triton"  # the engine ran on the (interpreted) Triton kernels
    assert engine["greedy"]["identical"] == engine["greedy"]["prompts"] > 0 and engine["parity"]["passed"]
    table = proc.stdout[proc.stdout.index("GPU check (smoke"):]
    for stage in status:
        assert any(line.startswith(stage) for line in table.splitlines()), stage
    assert "ALL STAGES PASSED" in table


def test_gpu_check_summary_reports_failures(tmp_path):
    """A failed, a timed-out and a result-less stage each show as such, and the summary exits 1."""
    (tmp_path / "stages.tsv").write_text("kernel_tests\t1\t5\t120\nengine\t124\t120\t120\nkernels\t0\t3\t75\n")
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "gpu_check.py"), "summary", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    status = {s["stage"]: s["status"] for s in json.loads((tmp_path / "summary.json").read_text())["stages"]}
    assert status == {"kernel_tests": "FAIL rc=1", "engine": "TIMEOUT", "kernels": "FAIL"}
    assert "SOME STAGES FAILED: kernel_tests, engine, kernels" in proc.stdout


def test_search_quality_benchmark_both_suites_at_toy_sizes(tiny_dir, tmp_path):
    """benchmarks/search_quality.py end to end on a tiny model: the ids suite (greedy, sampling, IDS,
    budget forcing matched to IDS's tokens) and the step suite, which reuses the sampling run."""
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"id": f"math500-{i:03d}", "problem": f"What is {i} + {i}?", "answer": str(2 * i), "level": 1 + (i == 3)}
            for i in range(4)]
    (data / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = SCRIPT.parent / "search_quality.py"
    common = ["--model", tiny_dir, "--data-dir", str(data), "--budget", "48", "--samples", "2", "--n", "2",
              "--out-dir", str(tmp_path / "runs")]
    reports = {}
    for suite in ("ids", "step"):
        out = tmp_path / f"{suite}.json"
        proc = subprocess.run([sys.executable, str(script), "--suite", suite, *common, "--out", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        reports[suite] = json.loads(out.read_text())
        assert out.with_suffix(".png").stat().st_size > 0
        if suite == "ids":
            sampling_file = (tmp_path / "runs" / "sampling.jsonl").read_bytes()
    ids, step = reports["ids"], reports["step"]
    assert ids["problems"] == 3  # level 1 only
    assert [r["run"] for r in ids["rows"]] == ["greedy", "self-consistency k=1", "self-consistency k=2", "ids",
                                               "budget_forcing"]
    ids_tokens = next(r for r in ids["rows"] if r["run"] == "ids")["mean_tokens_generated"]
    think = ids["budget_forcing_options"]["min_thinking_tokens"]
    assert think == max(1, round(ids_tokens) - 8) == ids["budget_forcing_options"]["max_thinking_tokens"]
    assert {(d["a"].split(" k=")[0], d["b"]) for d in ids["paired_differences"]} >= {("self-consistency", "ids")}
    assert len(ids["ids_self_correction_by_trigger"]) >= 1
    assert {r["run"] for r in step["rows"]} >= {"best_of_n", "beam_search_logprob", "beam_search_self_judge",
                                                 "dvts_logprob", "dvts_self_judge"}
    assert (tmp_path / "runs" / "sampling.jsonl").read_bytes() == sampling_file  # reused, not run again


SHARED_DATA = SCRIPT.parents[2] / "shared" / "data"  # ../shared/data beside the checkout (MATH-500 with solutions)


@pytest.mark.parametrize("script,args,check", [
    ("engine_overhead.py", ["--n", "2", "--new", "8", "--rounds", "2", "--reps", "1"], "tokens forwarded"),
    ("prefix_cache.py", ["--data-dir", str(SHARED_DATA), "--shots", "1", "--problems", "3", "--max-tokens", "4",
                         "--repeats", "1"], "same tokens: True"),
    ("ids_forwarding.py", ["--data-dir", "{data}", "--n", "2", "--b0", "4", "--max-tokens", "16"], "tokens_forwarded"),
    ("step_search.py", ["--data-dir", "{data}", "--n", "2", "--beam-width", "1", "--max-steps", "2",
                        "--max-tokens", "16"], "same chosen tokens on both engines: True"),
    ("rain_overhead.py", ["--max-tokens", "4", "--num-candidates", "2", "--max-visits", "3", "--min-new-searches", "2",
                          "--pairs", "1", "--rollout-max-tokens", "3", "--embedder", "lm"], "same tokens: True"),
    ("rain_harmlessness.py", ["--max-tokens", "3", "--num-candidates", "2", "--max-visits", "2",
                              "--min-new-searches", "1", "--samples", "1", "--limit", "2", "--rollout-max-tokens", "2",
                              "--embedder", "lm"], "harmless"),
])
def test_benchmark_scripts_run_end_to_end_at_toy_sizes(tiny_dir, tmp_path, script, args, check):
    """Each measuring script runs on a tiny model and writes its JSON (so an API change that breaks
    one is caught here, not on the day its reference is rerun)."""
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"id": f"math500-{i:03d}", "problem": f"What is {i} + {i}?", "answer": str(2 * i), "level": 1}
            for i in range(4)]
    (data / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.json"
    argv = [a.replace("{data}", str(data)) for a in args]
    model = Path(tiny_dir)
    if script == "rain_harmlessness.py":  # the HH judge's few-shot block alone is ~900 tokens
        model = tmp_path / "tiny_long"
        shutil.copytree(tiny_dir, model)
        cfg = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 2048}))
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / script), "--model", str(model), "--dtype", "float32",
                           *argv, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text()) and check in proc.stdout
