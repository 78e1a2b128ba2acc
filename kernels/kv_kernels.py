"""Batched KV row copy (the engine's ``fork``) and in-place row compaction (``compact``).

Layout (docs/design.md §2, the store): every KV tensor is 4-D ``[rows, kv_heads, capacity_cols, head_dim]``. All
tensors of one call live on one device, share ``rows`` and ``dtype``; ``kv_heads``, ``capacity_cols``,
``head_dim`` and strides may differ from tensor to tensor (K and V of one layer included). Tensors
must not alias one another.

Each operation has a plain torch reference (``*_reference``, any device) and a Triton
implementation (``*_triton``, CUDA, or CPU under ``TRITON_INTERPRET=1``) that moves every tensor
in ONE kernel launch through a small device table of base pointers, strides and sizes. Both share
the same argument validation, so they raise the same errors. The copies are bitwise (elements are
moved as 1/2/4/8-byte integers), so results are exactly equal.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
import torch

try:  # optional: the reference path works without triton (e.g. macOS)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None

__all__ = [
    "kv_copy_reference",
    "kv_gather_reference",
    "kv_copy_triton",
    "kv_gather_triton",
]

# ----------------------------------------------------------------------------------------------
# validation (shared by both implementations)
# ----------------------------------------------------------------------------------------------


def _check_layers(layers_k, layers_v) -> list[torch.Tensor]:
    """Return ``[*layers_k, *layers_v]`` after checking the layout contract."""
    layers_k, layers_v = list(layers_k), list(layers_v)
    if len(layers_k) != len(layers_v):
        raise ValueError(
            f"layers_k and layers_v must have equal length, got {len(layers_k)} and {len(layers_v)}"
        )
    tensors = layers_k + layers_v
    if not tensors:
        raise ValueError("layers_k and layers_v must not be empty")
    first = tensors[0]
    for i, t in enumerate(tensors):
        name = f"layers_k[{i}]" if i < len(layers_k) else f"layers_v[{i - len(layers_k)}]"
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-D tensor [rows, kv_heads, capacity_cols, head_dim], got {shape}")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device}, but layers_k[0] is on {first.device}; all must share one device")
        if t.dtype != first.dtype:
            raise ValueError(f"{name} has dtype {t.dtype}, but layers_k[0] has {first.dtype}; all must share one dtype")
        if t.shape[0] != first.shape[0]:
            raise ValueError(f"{name} has {t.shape[0]} rows, but layers_k[0] has {first.shape[0]}; all must share the row count")
        if _may_overlap_internally(t):
            raise ValueError(
                f"{name} has internally overlapping memory (strides {tuple(t.stride())} for shape {tuple(t.shape)}, "
                "e.g. an expand()ed / stride-0 view): the copy writes in place, so every element must have its "
                "own memory (clone() the tensor)"
            )
    return tensors


def _may_overlap_internally(t: torch.Tensor) -> bool:
    """True unless ``t``'s elements provably have distinct addresses (conservative).

    Dims of size > 1 sorted by stride: each stride must exceed the span of all smaller dims.
    Stride-0 (expanded) dims fail; so do the rare interleaved layouts that do not overlap.
    """
    if t.numel() <= 1:
        return False
    span = 0  # largest offset reachable with the dims seen so far
    for stride, size in sorted((abs(st), sz) for sz, st in zip(t.shape, t.stride()) if sz > 1):
        if stride <= span:
            return True
        span += (size - 1) * stride
    return False


def _to_host_index(x, name: str) -> torch.Tensor:
    """A 1-D int64 CPU copy of an index argument (python ints, int32 or int64 tensor)."""
    if isinstance(x, torch.Tensor):
        if x.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be an int32 or int64 tensor, got {x.dtype}")
        t = x.detach().to("cpu", torch.int64)
    else:
        try:
            t = torch.as_tensor(list(x), dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{name} must be a 1-D int tensor or a sequence of ints: {e}") from None
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t


def _check_rows_in_range(idx: torch.Tensor, name: str, nrows: int) -> None:
    if idx.numel():
        bad = idx[(idx < 0) | (idx >= nrows)]
        if bad.numel():
            raise ValueError(
                f"{name} contains row {int(bad[0])}; accepted range is [0, {nrows}) (the KV tensors have {nrows} rows)"
            )


def _check_unique(idx: torch.Tensor, name: str) -> None:
    if idx.numel() > 1:
        s, _ = torch.sort(idx)
        dup = s[1:][s[1:] == s[:-1]]
        if dup.numel():
            raise ValueError(f"{name} lists row {int(dup[0])} more than once; each row may appear at most once")


def _min_capacity(tensors: list[torch.Tensor]) -> int:
    return min(t.shape[2] for t in tensors)


def _validate_copy(layers_k, layers_v, src_rows, dst_rows, ncols):
    tensors = _check_layers(layers_k, layers_v)
    src = _to_host_index(src_rows, "src_rows")
    dst = _to_host_index(dst_rows, "dst_rows")
    if src.numel() != dst.numel():
        raise ValueError(f"src_rows and dst_rows must have equal length, got {src.numel()} and {dst.numel()}")
    if isinstance(ncols, bool) or not isinstance(ncols, int):
        try:
            ncols = int(ncols.__index__())
        except AttributeError:
            raise ValueError(f"ncols must be an int, got {type(ncols).__name__}") from None
    cap = _min_capacity(tensors)
    if not 0 <= ncols <= cap:
        raise ValueError(
            f"ncols={ncols} is out of range; accepted range is [0, {cap}] (the smallest capacity_cols among the tensors)"
        )
    nrows = tensors[0].shape[0]
    _check_rows_in_range(src, "src_rows", nrows)
    _check_rows_in_range(dst, "dst_rows", nrows)
    _check_unique(dst, "dst_rows")
    if src.numel():
        both = sorted(set(src.tolist()) & set(dst.tolist()))
        if both:
            raise ValueError(
                f"rows {both[:8]} appear in both src_rows and dst_rows; source and destination rows of one "
                "kv_copy call must not overlap (split the call)"
            )
    return tensors, src, dst, ncols


def _validate_gather(layers_k, layers_v, rows, col_index, col_count):
    tensors = _check_layers(layers_k, layers_v)
    ptrs = [t.data_ptr() for t in tensors]
    if len(set(ptrs)) != len(ptrs):
        raise ValueError("kv_gather works in place: the same tensor must not be listed twice in layers_k/layers_v")
    r = _to_host_index(rows, "rows")
    cnt = _to_host_index(col_count, "col_count")
    if isinstance(col_index, torch.Tensor):
        if col_index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"col_index must be an int32 or int64 tensor, got {col_index.dtype}")
        idx = col_index.detach().to("cpu", torch.int64)
    else:
        try:
            idx = torch.as_tensor(col_index, dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"col_index must be a 2-D int tensor [len(rows), max_count]: {e}") from None
    n = r.numel()
    if idx.dim() == 1 and idx.numel() == 0:
        idx = idx.reshape(n, 0)
    if idx.dim() != 2 or idx.shape[0] != n:
        raise ValueError(f"col_index must have shape [len(rows)={n}, max_count], got {tuple(idx.shape)}")
    if cnt.numel() != n:
        raise ValueError(f"col_count must have shape [len(rows)={n}], got [{cnt.numel()}]")
    nrows = tensors[0].shape[0]
    _check_rows_in_range(r, "rows", nrows)
    _check_unique(r, "rows")
    width = idx.shape[1]
    bad = (cnt < 0) | (cnt > width)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"col_count[{i}]={int(cnt[i])} is out of range; accepted range is [0, {width}] (col_index.shape[1])")
    cap = _min_capacity(tensors)
    j = torch.arange(width)
    valid = j[None, :] < cnt[:, None]
    out = valid & ((idx < 0) | (idx >= cap))
    if out.any():
        i, k = (int(v) for v in out.nonzero()[0])
        raise ValueError(
            f"col_index[{i}, {k}]={int(idx[i, k])} is out of range; accepted range is [0, {cap}) "
            "(the smallest capacity_cols among the tensors)"
        )
    if width > 1:
        unsorted = (j[None, 1:] < cnt[:, None]) & (idx[:, 1:] <= idx[:, :-1])
        if unsorted.any():
            i, k = (int(v) for v in unsorted.nonzero()[0])
            raise ValueError(
                f"col_index[{i}] is not strictly increasing (col_index[{i}, {k}]={int(idx[i, k])} >= "
                f"col_index[{i}, {k + 1}]={int(idx[i, k + 1])}); the first col_count[i] entries of each row "
                "must be sorted ascending and unique, which in-place left-packing requires"
            )
    # Leading entries with col_index[i, j] == j are already in place (sorted unique => a prefix).
    start = (valid & (idx == j[None, :])).sum(dim=1)
    return tensors, r, idx, cnt, start


# ----------------------------------------------------------------------------------------------
# torch references
# ----------------------------------------------------------------------------------------------


def kv_copy_reference(layers_k, layers_v, src_rows, dst_rows, ncols: int) -> None:
    """Plain torch ``kv_copy``: for each i, ``t[dst_rows[i], :, :ncols] = t[src_rows[i], :, :ncols]``
    for every tensor ``t`` in ``layers_k + layers_v``.

    ``src_rows``/``dst_rows``: equal-length 1-D int32/int64 tensors or int sequences (may be empty);
    rows in ``[0, rows)``; ``dst_rows`` unique; no row in both. ``0 <= ncols <= min capacity_cols``.
    Raises ``ValueError`` otherwise. In place, returns None.
    """
    tensors, src, dst, ncols = _validate_copy(layers_k, layers_v, src_rows, dst_rows, ncols)
    if src.numel() == 0 or ncols == 0:
        return
    device = tensors[0].device
    src, dst = src.to(device), dst.to(device)
    for t in tensors:
        t[dst, :, :ncols] = t[src, :, :ncols]


def kv_gather_reference(layers_k, layers_v, rows, col_index, col_count) -> None:
    """Plain torch ``kv_gather``: left-pack each listed row in place.

    For row ``r = rows[i]`` and ``j < col_count[i]``: new ``t[r, :, j] = old t[r, :, col_index[i, j]]``
    in every tensor ``t``. ``rows``: 1-D int (unique, in range, may be empty); ``col_index``:
    ``[len(rows), max_count]`` int32/int64, whose first ``col_count[i]`` entries of row i are sorted
    ascending, unique and in ``[0, min capacity_cols)`` (entries past ``col_count[i]`` are padding
    and ignored); ``col_count``: ``[len(rows)]`` int in ``[0, max_count]``. Columns
    ``>= col_count[i]`` are unspecified afterwards (these implementations leave them untouched).
    """
    tensors, r, idx, cnt, start = _validate_gather(layers_k, layers_v, rows, col_index, col_count)
    device = tensors[0].device
    for i in range(r.numel()):
        c, s = int(cnt[i]), int(start[i])
        if s >= c:
            continue
        src = idx[i, s:c].to(device)
        row = int(r[i])
        for t in tensors:
            t[row, :, s:c] = t[row, :, src]


# ----------------------------------------------------------------------------------------------
# Triton
# ----------------------------------------------------------------------------------------------

_TABLE_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()
_TABLE_CACHE_SIZE = 32
_TILE_BYTES = 16384  # bytes one program moves per tile (kv_copy) / per loop step (kv_gather)
TRITON_ELEMENT_SIZES = (1, 2, 4, 8)  # bytes; the kernels move elements as int8/16/32/64

if triton is not None:

    @triton.jit
    def _load_tensor_meta(table, t, ELEM_BYTES: tl.constexpr, ALIGNED: tl.constexpr):
        meta = table + t * 8  # 8 int64 fields per tensor: ptr, s_row, s_head, s_col, s_dim, heads, head_dim, pad
        addr = tl.load(meta)
        if ELEM_BYTES == 1:
            base = addr.to(tl.pointer_type(tl.int8))
        elif ELEM_BYTES == 2:
            base = addr.to(tl.pointer_type(tl.int16))
        elif ELEM_BYTES == 4:
            base = addr.to(tl.pointer_type(tl.int32))
        else:
            base = addr.to(tl.pointer_type(tl.int64))
        s_row = tl.load(meta + 1)
        s_head = tl.load(meta + 2)
        s_col = tl.load(meta + 3)
        s_dim = tl.load(meta + 4)
        heads = tl.load(meta + 5)
        head_dim = tl.load(meta + 6)
        if ALIGNED:  # host checked: base, row/head/col strides and head_dim are multiples of 16 bytes
            base = tl.multiple_of(base, 16)
            s_row = tl.multiple_of(s_row, 16 // ELEM_BYTES)
            s_head = tl.multiple_of(s_head, 16 // ELEM_BYTES)
            s_col = tl.multiple_of(s_col, 16 // ELEM_BYTES)
            head_dim = tl.multiple_of(head_dim, 16 // ELEM_BYTES)
        return base, s_row, s_head, s_col, s_dim, heads, head_dim

    @triton.jit(do_not_specialize=["ncols", "n_cblk"])
    def _kv_copy_kernel(
        table,  # int64 [n_tensors, 8]
        src_rows,  # int64 [n]
        dst_rows,  # int64 [n]
        ncols,
        n_cblk,
        ELEM_BYTES: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_D: tl.constexpr,
        CONTIG_D: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):
        # grid: (n * n_cblk, n_tensors, max_heads)
        pid = tl.program_id(0)
        pair = pid // n_cblk
        cb = pid - pair * n_cblk
        t = tl.program_id(1)
        h = tl.program_id(2)
        base, s_row, s_head, s_col, s_dim, heads, head_dim = _load_tensor_meta(table, t, ELEM_BYTES, ALIGNED)
        if h < heads:
            src = tl.load(src_rows + pair)
            dst = tl.load(dst_rows + pair)
            cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
            d = tl.arange(0, BLOCK_D)
            if CONTIG_D:
                d_off = d
            else:
                d_off = d * s_dim
            off = h * s_head + cols[:, None].to(tl.int64) * s_col + d_off[None, :]
            mask = (cols[:, None] < ncols) & (d[None, :] < head_dim)
            vals = tl.load(base + src * s_row + off, mask=mask)
            tl.store(base + dst * s_row + off, vals, mask=mask)

    @triton.jit(do_not_specialize=["n", "width"])
    def _kv_gather_kernel(
        table,  # int64 [n_tensors, 8]
        row_meta,  # int64 [3, n]: rows, col_count, start
        n,
        col_index,  # int32/int64 [n, width], contiguous
        width,
        ELEM_BYTES: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_D: tl.constexpr,
        CONTIG_D: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):
        # grid: (n, n_tensors, max_heads). One program owns one (row, tensor, head) and walks its
        # columns in increasing order, so every column it reads (col_index[j] >= j) is still
        # unwritten: earlier steps wrote only columns < j0, and a barrier separates each step's
        # loads from its stores (a later step's reads, >= j0 + BLOCK_C, never meet this step's
        # writes, so loads may be hoisted across steps).
        i = tl.program_id(0)
        t = tl.program_id(1)
        h = tl.program_id(2)
        base, s_row, s_head, s_col, s_dim, heads, head_dim = _load_tensor_meta(table, t, ELEM_BYTES, ALIGNED)
        if h < heads:
            row = tl.load(row_meta + i)
            count = tl.load(row_meta + n + i)
            start = tl.load(row_meta + 2 * n + i)
            rbase = base + row * s_row + h * s_head
            idx_row = col_index + i.to(tl.int64) * width
            d = tl.arange(0, BLOCK_D)
            if CONTIG_D:
                d_off = d
            else:
                d_off = d * s_dim
            dmask = d < head_dim
            for j0 in range(start, count, BLOCK_C):
                j = j0 + tl.arange(0, BLOCK_C)
                jmask = j < count
                src_c = tl.load(idx_row + j, mask=jmask, other=0).to(tl.int64)
                mask = jmask[:, None] & dmask[None, :]
                vals = tl.load(rbase + src_c[:, None] * s_col + d_off[None, :], mask=mask)
                tl.debug_barrier()
                tl.store(rbase + j[:, None].to(tl.int64) * s_col + d_off[None, :], vals, mask=mask)


def interpreted() -> bool:
    """Whether the Triton kernels were defined under ``TRITON_INTERPRET=1`` (they then run only on
    CPU tensors; the dispatcher never sends CUDA tensors to them)."""
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_kv_copy_kernel, InterpretedFunction)


def _require_triton() -> None:
    if triton is None:
        raise RuntimeError("the Triton kernels need the `triton` package, which is not installed")


def _on_device(device: torch.device):
    """Launch on ``device`` (Triton launches on the current CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small host tensor (indices, metadata) to ``device`` without a stream sync on CUDA:
    through pinned memory with ``non_blocking=True`` (the caching host allocator keeps the pinned
    block alive until the copy has run)."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def _check_triton_tensors(tensors: list[torch.Tensor]) -> None:
    """What the Triton path cannot move: element sizes other than 1/2/4/8 bytes (it moves whole
    elements as same-sized integers). ``ValueError`` naming the first offending tensor."""
    es = tensors[0].element_size()
    if es not in TRITON_ELEMENT_SIZES:
        raise ValueError(
            f"layers_k[0] has dtype {tensors[0].dtype} ({es}-byte elements); the Triton kernels move 1, 2, 4 or "
            "8-byte elements only (use the torch reference, DECODESEARCH_KERNELS=reference, for this dtype)"
        )


def _table(tensors: list[torch.Tensor]):
    """(device table, max_heads, max_head_dim, contiguous head_dim?, 16-byte aligned?), cached by layout.

    The key holds the dtype: the alignment flag depends on the element size, and tensors of two
    dtypes can share a pointer, shape and strides (views of one buffer, or a freed and reused block).
    """
    key = (
        tensors[0].device,
        tensors[0].dtype,
        tuple((t.data_ptr(), tuple(t.shape), t.stride()) for t in tensors),
    )
    hit = _TABLE_CACHE.get(key)
    if hit is not None:
        _TABLE_CACHE.move_to_end(key)
        return hit
    es = tensors[0].element_size()
    rows = []
    aligned = True
    contig = True
    for t in tensors:
        sr, sh, sc, sd = t.stride()
        _, heads, _, hd = t.shape
        rows.append([t.data_ptr(), sr, sh, sc, sd, heads, hd, 0])
        contig &= sd == 1 or hd == 1
        aligned &= t.data_ptr() % 16 == 0 and all((s * es) % 16 == 0 for s in (sr, sh, sc, hd))
    contig_all = bool(contig)
    aligned = bool(aligned and contig_all and es in TRITON_ELEMENT_SIZES)
    dev_table = _upload(torch.tensor(rows, dtype=torch.int64), tensors[0].device)
    value = (
        dev_table,
        max(t.shape[1] for t in tensors),
        max(t.shape[3] for t in tensors),
        contig_all,
        aligned,
    )
    _TABLE_CACHE[key] = value
    if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
        _TABLE_CACHE.popitem(last=False)
    return value


def _blocks(max_hd: int, es: int, ncols: int) -> tuple[int, int]:
    block_d = triton.next_power_of_2(max(max_hd, 1))
    tile = max(_TILE_BYTES // es, block_d)
    block_c = max(1, min(tile // block_d, triton.next_power_of_2(max(ncols, 1))))
    return block_c, block_d


def _check_grid(n_tensors: int, max_heads: int) -> None:
    if n_tensors > 65535 or max_heads > 65535:
        raise ValueError(f"too many tensors ({n_tensors}) or kv_heads ({max_heads}) for one launch (max 65535 each)")


def kv_copy_triton(layers_k, layers_v, src_rows, dst_rows, ncols: int) -> None:
    """Triton ``kv_copy`` (same contract as :func:`kv_copy_reference`): one launch for all tensors.

    Needs CUDA tensors, or CPU tensors with ``TRITON_INTERPRET=1`` set before triton was imported.
    """
    tensors, src, dst, ncols = _validate_copy(layers_k, layers_v, src_rows, dst_rows, ncols)
    _require_triton()
    _check_triton_tensors(tensors)
    tensors = [t for t in tensors if t.numel()]  # no heads / head_dim 0: nothing to move
    n = src.numel()
    if n == 0 or ncols == 0 or not tensors:
        return
    device = tensors[0].device
    table, max_heads, max_hd, contig, aligned = _table(tensors)
    es = tensors[0].element_size()
    block_c, block_d = _blocks(max_hd, es, ncols)
    n_cblk = triton.cdiv(ncols, block_c)
    _check_grid(len(tensors), max_heads)
    idx = _upload(torch.stack([src, dst]), device)
    grid = (n * n_cblk, len(tensors), max_heads)
    with _on_device(device):
        _kv_copy_kernel[grid](
            table, idx[0], idx[1], ncols, n_cblk,
            ELEM_BYTES=es, BLOCK_C=block_c, BLOCK_D=block_d, CONTIG_D=contig, ALIGNED=aligned,
            num_warps=4,
        )


def kv_gather_triton(layers_k, layers_v, rows, col_index, col_count) -> None:
    """Triton ``kv_gather`` (same contract as :func:`kv_gather_reference`): one launch, in place.

    Needs CUDA tensors, or CPU tensors with ``TRITON_INTERPRET=1`` set before triton was imported.
    """
    tensors, r, idx, cnt, start = _validate_gather(layers_k, layers_v, rows, col_index, col_count)
    _require_triton()
    _check_triton_tensors(tensors)
    tensors = [t for t in tensors if t.numel()]
    n = r.numel()
    if n == 0 or not tensors or bool((start >= cnt).all()):
        return
    device = tensors[0].device
    table, max_heads, max_hd, contig, aligned = _table(tensors)
    es = tensors[0].element_size()
    width = idx.shape[1]
    block_c, block_d = _blocks(max_hd, es, width)
    _check_grid(len(tensors), max_heads)
    meta = _upload(torch.stack([r, cnt, start]), device)
    if isinstance(col_index, torch.Tensor) and col_index.device == device:
        dev_idx = col_index.contiguous()
    else:
        dev_idx = _upload(idx, device)
    grid = (n, len(tensors), max_heads)
    with _on_device(device):
        _kv_gather_kernel[grid](
            table, meta, n, dev_idx, width,
            ELEM_BYTES=es, BLOCK_C=block_c, BLOCK_D=block_d, CONTIG_D=contig, ALIGNED=aligned,
            num_warps=4,
        )
