"""The on-disk cache of converted registry models: where it is, when a folder counts as complete, atomic builds.

Cache directory: ``$DECODESEARCH_CACHE``, else ``$XDG_CACHE_HOME/decodesearch``, else
``~/.cache/decodesearch``; one sub-folder per registry name. A folder counts as complete only when
it holds the marker file ``decodesearch-complete.json`` (written last, inside a temporary build
folder that is then renamed into place) whose manifest matches the files on disk; anything else
(half-written, truncated, fails to load) is rebuilt. Only file sizes are checked on each load,
not weight hashes (that would cost ~0.5 s per 500 MB); damaged weights are caught when loading.
Builds of one model are serialised across processes by a lock file in the cache root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

from decodesearch.models import gguf
from decodesearch.models.registry import REGISTRY, RegistryEntry

MARKER = "decodesearch-complete.json"
CACHE_FORMAT = 1


def cache_dir() -> Path:
    """The cache root (not created): $DECODESEARCH_CACHE, $XDG_CACHE_HOME/decodesearch or ~/.cache/decodesearch."""
    if os.environ.get("DECODESEARCH_CACHE"):
        return Path(os.environ["DECODESEARCH_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "decodesearch"
    return Path.home() / ".cache" / "decodesearch"


def cached_path(name: str) -> Path:
    """Where registry model ``name`` is (or will be) converted to."""
    return cache_dir() / REGISTRY[name].name


def read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def cache_problem(entry: RegistryEntry, folder: Path) -> str | None:
    """Why ``folder`` is not a complete conversion of ``entry`` (None if it looks complete)."""
    if not folder.is_dir():
        return "missing"
    marker = read_marker(folder)
    if not isinstance(marker, dict):
        return f"no readable {MARKER} (incomplete build)"
    if marker.get("format") != CACHE_FORMAT or marker.get("source_sha256") != entry.sha256:
        return "built by another format version or from another source file"
    files = marker.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return "marker has no valid manifest"
    for rel, size in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != size:
            return f"{rel} has {path.stat().st_size} bytes, manifest says {size}"
    return None


@contextlib.contextmanager
def build_lock(root: Path, name: str) -> Iterator[None]:
    """Serialise builds of one model across processes."""
    from filelock import FileLock

    with FileLock(root / f".{name}.lock"):
        yield


def build(entry: RegistryEntry, target: Path) -> None:
    """Convert ``entry`` into a temp folder beside ``target``, mark it complete, rename it into place."""
    root = target.parent
    work = Path(tempfile.mkdtemp(prefix=f".build-{entry.name}-", dir=root))
    try:
        out = work / "hf"
        out.mkdir()
        gguf.convert(entry, out, work)  # looked up on the module: tests replace it
        files = {
            str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()
        }
        import torch
        import transformers

        marker = {
            "format": CACHE_FORMAT,
            "name": entry.name,
            "source_sha256": entry.sha256,
            "source_size": entry.size,
            "build_id": uuid.uuid4().hex,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "files": files,
        }
        with open(out / MARKER, "w") as fh:
            json.dump(marker, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        if target.exists() or target.is_symlink():
            trash = root / f".trash-{entry.name}-{uuid.uuid4().hex[:8]}"
            os.replace(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remove_leftovers(root: Path, name: str) -> None:
    """Delete temp folders of crashed builds of ``name`` (call only while holding its build lock)."""
    for pattern in (f".build-{name}-*", f".trash-{name}-*"):
        for path in root.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)
