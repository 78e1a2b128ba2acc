"""The GPU kernel benchmark works before GPU time is spent on it: its --smoke mode runs the same code
on CPU under the Triton interpreter at toy sizes (timings are not checked: they mean nothing)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"


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
