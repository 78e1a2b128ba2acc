"""``load_model``: a registry name (converted once, then read from the cache), a hub id or a local folder.

The dtype and device arguments are checked before anything is read; transformers' loaders are
serialised within the process, conversions across processes (``cache.build_lock``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

from decodesearch.models.cache import build, build_lock, cache_dir, cache_problem, read_marker, remove_leftovers
from decodesearch.models.errors import ModelLoadError, UnknownModelError
from decodesearch.models.registry import REGISTRY, RegistryEntry

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")

# transformers' from_pretrained is not thread-safe: it swaps class attributes in and out
# (e.g. PreTrainedModel.tie_weights), and two threads interleaving leave them swapped for good.
_TRANSFORMERS_LOCK = threading.RLock()


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
    problem = cache_problem(entry, target)
    seen = (read_marker(target) or {}).get("build_id") if problem is None else None
    if problem is None:
        try:
            return _from_pretrained(target, dtype, device)
        except Exception as exc:  # damaged weights/config: rebuild below
            if _is_oom(exc):
                raise
            problem = f"failed to load ({type(exc).__name__}: {exc})"
    root.mkdir(parents=True, exist_ok=True)
    with build_lock(root, entry.name):
        remove_leftovers(root, entry.name)
        # Another process may have rebuilt it while we waited for the lock.
        now = read_marker(target) or {}
        if cache_problem(entry, target) is None and now.get("build_id") != seen:
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
            build(entry, target)
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
