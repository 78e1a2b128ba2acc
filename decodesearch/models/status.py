"""The registry as a table: for each model, is its package installed, is its converted folder cached."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from decodesearch.models.cache import cache_dir, cache_problem
from decodesearch.models.errors import MissingPackageError
from decodesearch.models.registry import REGISTRY


@dataclass(frozen=True)
class ModelStatus:
    """Registry row: ``installed`` = source package present, ``cached`` = converted folder complete."""

    name: str
    description: str
    installed: bool
    cached: bool
    cache_path: Path
    pip_command: str


def list_models() -> list[ModelStatus]:
    """The registry with installed/cached status (cheap: no hashing, no model loading)."""
    rows = []
    for entry in REGISTRY.values():
        try:
            entry.locate()
            installed = True
        except MissingPackageError:
            installed = False
        path = cache_dir() / entry.name
        rows.append(
            ModelStatus(
                name=entry.name,
                description=entry.description,
                installed=installed,
                cached=cache_problem(entry, path) is None,
                cache_path=path,
                pip_command=entry.pip_command,
            )
        )
    return rows
