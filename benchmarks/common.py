"""What the benchmark scripts share: where results and data live, the model flags, the record of
the environment a run happened in, and how a JSON report is written.

Contract. A script here is run as ``python benchmarks/X.py`` (its folder is then on ``sys.path``,
so ``from common import ...`` works; tests run the scripts the same way, by subprocess). Importing
this module imports nothing heavy: torch is imported inside `environment`, so a script can still set
``TRITON_INTERPRET`` (or load nothing at all) after importing it.

- `RESULTS`: ``benchmarks/results``, where reference reports go.
- `DATA`: the data folder: ``$DECODESEARCH_DATA`` when set, else ``shared/data`` beside the repository.
- `add_model_args` adds ``--model``, ``--dtype`` and (when given a default) ``--device``;
  `add_data_arg` adds ``--data-dir`` (default `DATA`).
- `environment(args)` is a dict to spread first into a report (the script's own keys follow and
  win): ``model``, ``dtype``, ``device`` (those of ``args`` that are set), ``threads`` (torch's),
  ``cpu_count``, ``machine``, ``processor``, ``python``, ``torch``, ``git`` (``commit``, ``dirty``:
  tracked or new files differ from it outside ``benchmarks/results``, ``decodesearch_dirty``: the
  library itself differs; each None without git), ``load_average`` (1, 5, 15 min, at the call) and
  ``command`` (``sys.argv``).
- `write_report(path, report)` writes ``report`` as JSON (indent 2, a final newline), making the
  folder first, prints ``wrote PATH`` unless ``quiet`` and returns the path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DATA = Path(os.environ.get("DECODESEARCH_DATA", ROOT.parent / "shared" / "data"))


def add_model_args(parser: argparse.ArgumentParser, model: str, dtype: str = "float32",
                   dtypes: tuple[str, ...] | None = ("float32", "bfloat16"), device: str | None = None,
                   model_help: str | None = None) -> None:
    """``--model`` (default `model`), ``--dtype`` (default `dtype`, one of `dtypes`; any text when None)
    and, when `device` is given, ``--device`` with it as the default."""
    parser.add_argument("--model", default=model, help=model_help)
    parser.add_argument("--dtype", default=dtype, choices=list(dtypes) if dtypes else None)
    if device is not None:
        parser.add_argument("--device", default=device)


def add_data_arg(parser: argparse.ArgumentParser) -> None:
    """``--data-dir``: the folder of math500.jsonl (default `DATA`)."""
    parser.add_argument("--data-dir", default=str(DATA))


def git_state() -> dict:
    """The commit checked out and whether the tree differs from it (None where git cannot tell)."""

    def git(*a: str) -> str | None:
        try:
            proc = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):  # no git: record nothing
            return None
        return proc.stdout if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    if status is None:
        return {"commit": commit and commit.strip(), "dirty": None, "decodesearch_dirty": None}
    paths = [line[3:].split(" -> ")[-1].strip('"') for line in status.splitlines() if line.strip()]
    return {"commit": commit and commit.strip(),
            "dirty": any(not p.startswith("benchmarks/results/") for p in paths),
            "decodesearch_dirty": any(p.startswith("decodesearch/") for p in paths)}


def environment(args: argparse.Namespace | None = None) -> dict:
    """What was run, and where (see the module docstring for the keys)."""
    import torch

    env = {k: getattr(args, k) for k in ("model", "dtype", "device") if getattr(args, k, None) is not None}
    try:
        load = list(os.getloadavg())
    except OSError:  # not available on this platform
        load = None
    env.update({"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
                "processor": platform.processor(), "python": platform.python_version(), "torch": torch.__version__,
                "git": git_state(), "load_average": load, "command": " ".join(sys.argv)})
    return env


def write_report(path: str | Path, report: dict, *, quiet: bool = False) -> Path:
    """Write `report` as JSON to `path` (its folder made first); print ``wrote PATH`` unless `quiet`."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if not quiet:
        print(f"wrote {out}")
    return out


def engine_vs_reencode(engine: dict, reencode: dict) -> dict:
    """Print the side-by-side table of one search run on `Engine` and on `Engine(backend=Reencode())`
    (dicts with tokens_forwarded, forward_calls, wall_s, tokens_generated) and return the ratios
    re-encode / engine of tokens forwarded and wall time."""
    print(f"\n{'':<22}{'engine':>12}{'re-encode':>12}{'ratio':>8}")
    for key in ("tokens_forwarded", "forward_calls", "wall_s"):
        print(f"{key:<22}{engine[key]:>12.1f}{reencode[key]:>12.1f}{reencode[key] / engine[key]:>7.2f}x")
    print(f"{'tokens_generated':<22}{engine['tokens_generated']:>12}{reencode['tokens_generated']:>12}")
    return {"ratio_tokens_forwarded": reencode["tokens_forwarded"] / engine["tokens_forwarded"],
            "ratio_wall": reencode["wall_s"] / engine["wall_s"]}
