"""Backend choice for the public kernels: Triton for CUDA tensors, the torch reference otherwise.

``DECODESEARCH_KERNELS`` (read at every call) forces a backend: ``reference`` or ``triton``; unset
or empty means automatic. Forcing ``triton`` on CPU tensors works only under ``TRITON_INTERPRET=1``
(set before triton is imported). ``triton`` is imported only by the kernel modules, optionally, so
the reference path works where triton is not installed.

Automatic mode never fails for want of Triton: CUDA tensors go to the torch reference, with one
warning per device, when the kernels were defined under ``TRITON_INTERPRET=1`` (the interpreter is
for CPU tensors only) or when a Triton kernel cannot compile or launch on the device (the device is
then remembered and never tried again in this process). Dtypes the Triton kernels cannot move
(element sizes other than 1/2/4/8 bytes) go to the reference silently. A forced ``triton`` backend
raises instead of falling back.
"""

from __future__ import annotations

import os
import warnings

import torch

from . import kv_kernels as _kv
from . import score_kernel as _score

ENV_VAR = "DECODESEARCH_KERNELS"
BACKENDS = ("reference", "triton")

__all__ = ["ENV_VAR", "BACKENDS", "backend_for", "kv_copy", "kv_gather", "score"]

# device key -> why Triton is not used there (a failed compile/launch); filled at run time
_FAILED: dict[str, str] = {}
_WARNED: set[str] = set()


def _triton_available() -> bool:
    return _kv.triton is not None and _score.triton is not None


def _interpreted() -> bool:
    return _kv.interpreted()


def _device_key(device: torch.device) -> str:
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _auto_backend(device: torch.device) -> str:
    """The automatic choice, before remembered failures are taken into account."""
    if device.type != "cuda" or not _triton_available():
        return "reference"
    if _interpreted():
        _warn_once(
            "interpret:" + _device_key(device),
            "decodesearch.kernels: the Triton kernels were defined under TRITON_INTERPRET=1, which runs CPU "
            f"tensors only; calls on {device} use the torch reference (unset TRITON_INTERPRET before "
            "importing decodesearch to use Triton on the GPU)",
        )
        return "reference"
    return "triton"


def backend_for(device: torch.device) -> str:
    """The backend (``"reference"`` or ``"triton"``) a call on ``device`` uses now.

    Raises ``ValueError`` for an unknown ``DECODESEARCH_KERNELS`` value and ``RuntimeError`` when
    ``triton`` is forced but cannot run here.
    """
    raw = os.environ.get(ENV_VAR, "")
    forced = raw.strip().lower()
    if forced == "":
        backend = _auto_backend(device)
        if backend == "triton" and _device_key(device) in _FAILED:
            return "reference"
        return backend
    if forced not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={raw!r} is not supported; accepted values: 'reference', 'triton' (or unset)")
    if forced == "triton":
        if not _triton_available():
            raise RuntimeError(f"{ENV_VAR}=triton but the `triton` package is not installed")
        if device.type == "cuda" and _interpreted():
            raise RuntimeError(
                f"{ENV_VAR}=triton on {device} tensors, but the kernels were defined under TRITON_INTERPRET=1, "
                "which never runs CUDA tensors (unset TRITON_INTERPRET before importing decodesearch)"
            )
        if device.type != "cuda" and (os.environ.get("TRITON_INTERPRET", "0") in ("", "0") or not _interpreted()):
            raise RuntimeError(
                f"{ENV_VAR}=triton on {device.type} tensors needs TRITON_INTERPRET=1 (set before importing triton)"
            )
    return forced


def _forced() -> bool:
    return os.environ.get(ENV_VAR, "").strip().lower() == "triton"


def _run(name: str, device: torch.device, triton_fn, reference_fn, args, kwargs=None):
    """Call ``triton_fn`` or ``reference_fn``; in automatic mode a Triton failure to compile or launch
    on ``device`` falls back to the reference (with a warning) for good on that device."""
    kwargs = kwargs or {}
    if backend_for(device) != "triton":
        return reference_fn(*args, **kwargs)
    if _forced():
        return triton_fn(*args, **kwargs)
    try:
        return triton_fn(*args, **kwargs)
    except (ValueError, torch.OutOfMemoryError):  # a broken contract / no memory: not the device's fault
        raise
    except Exception as e:  # compile / PTX / launch failure (raised before anything was written)
        key = _device_key(device)
        _FAILED[key] = f"{type(e).__name__}: {e}"
        _warn_once(
            "failed:" + key,
            f"decodesearch.kernels: the Triton {name} kernel cannot run on {device} "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}); "
            f"using the torch reference on this device from now on (set {ENV_VAR}=reference to silence this)",
        )
        return reference_fn(*args, **kwargs)


def _device_of(layers_k, layers_v) -> torch.device:
    for t in (*layers_k, *layers_v):
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def _dtype_of(layers_k, layers_v):
    for t in (*layers_k, *layers_v):
        if isinstance(t, torch.Tensor):
            return t.dtype
    return None


def _kv_triton_or_reference(layers_k, layers_v, triton_fn, reference_fn):
    """Automatic mode sends dtypes the Triton kernels cannot move to the reference."""
    dtype = _dtype_of(layers_k, layers_v)
    if dtype is not None and not _forced():
        size = torch.empty((), dtype=dtype).element_size()
        if size not in _kv.TRITON_ELEMENT_SIZES:
            return reference_fn, reference_fn
    return triton_fn, reference_fn


def kv_copy(layers_k, layers_v, src_rows, dst_rows, ncols: int) -> None:
    """Copy columns ``[0, ncols)`` of row ``src_rows[i]`` to row ``dst_rows[i]`` in every KV tensor.

    ``layers_k``, ``layers_v``: equal-length lists of ``[rows, kv_heads, capacity_cols, head_dim]``
    tensors on one device with one dtype and row count, none with internally overlapping memory
    (expanded views). ``src_rows``/``dst_rows``: equal-length 1-D int32/int64 tensors or int
    sequences (may be empty), in ``[0, rows)``, ``dst_rows`` unique, no row in both.
    ``0 <= ncols <= min capacity_cols``. ``ValueError`` otherwise. In place.
    """
    layers_k, layers_v = list(layers_k), list(layers_v)
    tri, ref = _kv_triton_or_reference(layers_k, layers_v, _kv.kv_copy_triton, _kv.kv_copy_reference)
    return _run("kv_copy", _device_of(layers_k, layers_v), tri, ref, (layers_k, layers_v, src_rows, dst_rows, ncols))


def kv_gather(layers_k, layers_v, rows, col_index, col_count) -> None:
    """Left-pack rows in place: new column ``j < col_count[i]`` of row ``rows[i]`` = old column
    ``col_index[i, j]``, in every KV tensor.

    ``col_index``: ``[len(rows), max_count]`` int32/int64; the first ``col_count[i]`` entries of each
    row sorted ascending, unique, in ``[0, min capacity_cols)`` (so ``col_index[i, j] >= j``); the
    rest is padding. ``rows`` unique and in range. Columns ``>= col_count[i]`` are unspecified
    afterwards. ``ValueError`` on a broken contract.
    """
    layers_k, layers_v = list(layers_k), list(layers_v)
    tri, ref = _kv_triton_or_reference(layers_k, layers_v, _kv.kv_gather_triton, _kv.kv_gather_reference)
    return _run("kv_gather", _device_of(layers_k, layers_v), tri, ref, (layers_k, layers_v, rows, col_index, col_count))


def score(logits: torch.Tensor, token_ids: torch.Tensor, check_ids: bool = True):
    """``(logsumexp [B], logprobs [B, C], entropy [B])``, all float32, from ``logits [B, V]``
    (fp32/bf16/fp16) and ``token_ids [B, C]`` (int32/int64 in ``[0, V)``, ``C`` may be 0).
    ``check_ids=False`` skips the range check (a device->host sync) for ids known to be in range."""
    device = logits.device if isinstance(logits, torch.Tensor) else torch.device("cpu")
    return _run("score", device, _score.score_triton, _score.score_reference, (logits, token_ids),
                {"check_ids": check_ids})
