"""Backend choice for the public kernels: Triton for CUDA tensors, the torch reference otherwise.

``DECODESEARCH_KERNELS`` (read at every call) forces a backend: ``reference`` or ``triton``; unset
or empty means automatic. Forcing ``triton`` on CPU tensors works only under ``TRITON_INTERPRET=1``
(set before triton is imported). ``triton`` is imported only by the kernel modules, optionally, so
the reference path works where triton is not installed.
"""

from __future__ import annotations

import os

import torch

from . import kv_kernels as _kv
from . import score_kernel as _score

ENV_VAR = "DECODESEARCH_KERNELS"
BACKENDS = ("reference", "triton")

__all__ = ["ENV_VAR", "BACKENDS", "backend_for", "kv_copy", "kv_gather", "score"]


def _triton_available() -> bool:
    return _kv.triton is not None and _score.triton is not None


def backend_for(device: torch.device) -> str:
    """The backend (``"reference"`` or ``"triton"``) a call on ``device`` uses now.

    Raises ``ValueError`` for an unknown ``DECODESEARCH_KERNELS`` value and ``RuntimeError`` when
    ``triton`` is forced but cannot run here.
    """
    raw = os.environ.get(ENV_VAR, "")
    forced = raw.strip().lower()
    if forced == "":
        return "triton" if device.type == "cuda" and _triton_available() else "reference"
    if forced not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={raw!r} is not supported; accepted values: 'reference', 'triton' (or unset)")
    if forced == "triton":
        if not _triton_available():
            raise RuntimeError(f"{ENV_VAR}=triton but the `triton` package is not installed")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            raise RuntimeError(
                f"{ENV_VAR}=triton on {device.type} tensors needs TRITON_INTERPRET=1 (set before importing triton)"
            )
    return forced


def _device_of(layers_k, layers_v) -> torch.device:
    for t in (*layers_k, *layers_v):
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def kv_copy(layers_k, layers_v, src_rows, dst_rows, ncols: int) -> None:
    """Copy columns ``[0, ncols)`` of row ``src_rows[i]`` to row ``dst_rows[i]`` in every KV tensor.

    ``layers_k``, ``layers_v``: equal-length lists of ``[rows, kv_heads, capacity_cols, head_dim]``
    tensors on one device with one dtype and row count. ``src_rows``/``dst_rows``: equal-length
    1-D int32/int64 tensors or int sequences (may be empty), in ``[0, rows)``, ``dst_rows`` unique,
    no row in both. ``0 <= ncols <= min capacity_cols``. ``ValueError`` otherwise. In place.
    """
    if backend_for(_device_of(layers_k, layers_v)) == "triton":
        return _kv.kv_copy_triton(layers_k, layers_v, src_rows, dst_rows, ncols)
    return _kv.kv_copy_reference(layers_k, layers_v, src_rows, dst_rows, ncols)


def kv_gather(layers_k, layers_v, rows, col_index, col_count) -> None:
    """Left-pack rows in place: new column ``j < col_count[i]`` of row ``rows[i]`` = old column
    ``col_index[i, j]``, in every KV tensor.

    ``col_index``: ``[len(rows), max_count]`` int32/int64; the first ``col_count[i]`` entries of each
    row sorted ascending, unique, in ``[0, min capacity_cols)`` (so ``col_index[i, j] >= j``); the
    rest is padding. ``rows`` unique and in range. Columns ``>= col_count[i]`` are unspecified
    afterwards. ``ValueError`` on a broken contract.
    """
    if backend_for(_device_of(layers_k, layers_v)) == "triton":
        return _kv.kv_gather_triton(layers_k, layers_v, rows, col_index, col_count)
    return _kv.kv_gather_reference(layers_k, layers_v, rows, col_index, col_count)


def score(logits: torch.Tensor, token_ids: torch.Tensor, check_ids: bool = True):
    """``(logsumexp [B], logprobs [B, C], entropy [B])``, all float32, from ``logits [B, V]``
    (fp32/bf16/fp16) and ``token_ids [B, C]`` (int32/int64 in ``[0, V)``, ``C`` may be 0).
    ``check_ids=False`` skips the range check (a device->host sync) for ids known to be in range."""
    device = logits.device if isinstance(logits, torch.Tensor) else torch.device("cpu")
    if backend_for(device) == "triton":
        return _score.score_triton(logits, token_ids, check_ids=check_ids)
    return _score.score_reference(logits, token_ids, check_ids=check_ids)
