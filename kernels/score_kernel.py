"""Fused next-token scoring: per-row logsumexp, log-probs of given token ids, and entropy.

``score(logits, token_ids) -> (logsumexp, logprobs, entropy)``

* ``logits``: ``[B, V]`` float32 / bfloat16 / float16 (any row stride; unit stride along V is
  used as is, otherwise a contiguous copy is made), ``V >= 1``.
* ``token_ids``: ``[B, C]`` int32 / int64 with values in ``[0, V)``; ``C`` may be 0.
* returns ``logsumexp [B]``, ``logprobs [B, C]`` (``log_softmax(logits)[b, token_ids[b, c]]``) and
  ``entropy [B]`` (``-sum_v p log p``, natural log), all float32, on ``logits.device``.

All arithmetic is float32. The Triton kernel reads each row's vocabulary once with a streaming
(online) logsumexp and entropy: per lane it keeps the running max ``m``, ``s = sum exp(x - m)`` and
``t = sum exp(x - m) * (x - m)``; then ``lse = m + log s`` and ``entropy = log s - t / s``. No
``[B, V]`` log-softmax is materialised. For small batches the vocabulary is split over several
programs whose partial ``(m, s, t)`` are merged by a second tiny kernel. Vocabulary sizes are
runtime values (only the block sizes are ``constexpr``), so any ``V`` below 2**31 works. Rows that
are entirely ``-inf`` (or contain NaN / +inf) give unspecified results.
"""

from __future__ import annotations

import contextlib

import torch

try:  # optional: the reference path works without triton (e.g. macOS)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None

__all__ = ["score_reference", "score_triton"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _validate_score(logits, token_ids, check_ids: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a 2-D tensor [B, V], got {shape}")
    if logits.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"logits must be float32, bfloat16 or float16, got {logits.dtype}")
    B, V = logits.shape
    if V < 1:
        raise ValueError("logits must have a non-empty vocabulary (V >= 1)")
    if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 2 or token_ids.shape[0] != B:
        shape = tuple(token_ids.shape) if isinstance(token_ids, torch.Tensor) else type(token_ids).__name__
        raise ValueError(f"token_ids must be a 2-D tensor [B={B}, C], got {shape}")
    if token_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"token_ids must be int32 or int64, got {token_ids.dtype}")
    if token_ids.device != logits.device:
        if logits.device.type == "cuda" and token_ids.device.type == "cpu":  # no stream sync
            token_ids = token_ids.pin_memory().to(logits.device, non_blocking=True)
        else:
            token_ids = token_ids.to(logits.device)
    if check_ids and token_ids.numel():  # one small device->host read
        lo, hi = (int(v) for v in torch.stack(torch.aminmax(token_ids)).tolist())
        if lo < 0 or hi >= V:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token_ids contains {bad}; accepted range is [0, {V}) (the vocabulary size V)")
    return logits, token_ids


def score_reference(logits: torch.Tensor, token_ids: torch.Tensor, *, check_ids: bool = True):
    """Plain torch ``score``: ``log_softmax`` + ``gather`` + entropy, in float32.

    Returns ``(logsumexp [B] fp32, logprobs [B, C] fp32, entropy [B] fp32)``; see the module doc.
    ``ValueError`` on bad shapes/dtypes or token ids outside ``[0, V)`` (that range check is skipped
    with ``check_ids=False``: the caller vouches for the ids).
    """
    logits, token_ids = _validate_score(logits, token_ids, check_ids)
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    logp = x - lse[:, None]
    p = logp.exp()
    entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=-1)
    return lse, logp.gather(1, token_ids.long()), entropy


# ----------------------------------------------------------------------------------------------
# Triton
# ----------------------------------------------------------------------------------------------

_NEG_INF = float("-inf")

if triton is not None:

    @triton.jit
    def _online_update(m, s, t, x):
        """Fold one element per lane, ``x``, into the lane state ``(m, s, t)`` (see module doc)."""
        new_m = tl.maximum(m, x)
        x_inf = x == float("-inf")
        m_inf = m == float("-inf")
        # diff = min(x, m) - max(x, m) <= 0, or -inf if either is -inf (operands kept finite: no NaN)
        diff = -tl.abs(tl.where(x_inf, 0.0, x) - tl.where(m_inf, 0.0, m))
        diff = tl.where(x_inf | m_inf, float("-inf"), diff)
        e = tl.exp(diff)
        live = e > 0.0
        diff = tl.where(live, diff, 0.0)  # where e == 0 the terms below vanish anyway
        up = x > m
        # up: old state rescaled by e, x contributes exp(0) = 1 and 0 to t
        # else: x contributes e to s and e * (x - m) to t
        s_up = s * e + 1.0
        t_up = (t + s * diff) * e
        s_keep = s + e
        t_keep = t + e * diff
        return new_m, tl.where(up, s_up, s_keep), tl.where(up, t_up, t_keep)

    @triton.jit
    def _merge(m, s, t):
        """Reduce a vector of states ``(m, s, t)`` (states relative to their own max) to one."""
        M = tl.max(m, 0)
        dead = m == float("-inf")  # M == -inf implies every lane is dead
        rel = tl.where(dead, 0.0, m - tl.where(M == float("-inf"), 0.0, M))
        w = tl.where(dead, 0.0, tl.exp(rel))
        S = tl.sum(s * w, 0)
        T = tl.sum((t + s * rel) * w, 0)
        return M, S, T

    @triton.jit
    def _finish(row, M, S, T, row_ptr, V, token_ids, tok_stride, C, lse_out, lp_out, ent_out, BLOCK_T: tl.constexpr):
        log_s = tl.log(S)
        lse = M + log_s
        tl.store(lse_out + row, lse)
        tl.store(ent_out + row, log_s - T / S)
        tok_row = token_ids + row * tok_stride
        lp_row = lp_out + row * C
        for c0 in range(0, C, BLOCK_T):
            c = c0 + tl.arange(0, BLOCK_T)
            cmask = c < C
            tok = tl.load(tok_row + c, mask=cmask, other=0).to(tl.int64)
            ok = (tok >= 0) & (tok < V)  # unchecked out-of-range ids read nothing and give NaN
            x = tl.load(row_ptr + tok, mask=cmask & ok, other=0.0).to(tl.float32)
            tl.store(lp_row + c, tl.where(ok, x - lse, float("nan")), mask=cmask)

    @triton.jit
    def _score_kernel(
        logits,  # [B, V], unit stride along V
        stride_row,
        V,
        chunk,  # vocabulary entries per split, a multiple of BLOCK_V
        token_ids,  # [B, C]
        tok_stride,
        C,
        lse_out,  # fp32 [B]
        lp_out,  # fp32 [B, C], contiguous
        ent_out,  # fp32 [B]
        part,  # fp32 [3, B, n_splits] partial (m, s, t); unused when FINAL
        B,
        n_splits,
        FINAL: tl.constexpr,  # n_splits == 1: finish here
        BLOCK_V: tl.constexpr,
        BLOCK_T: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        split = tl.program_id(1)
        row_ptr = logits + row * stride_row
        v_start = split * chunk
        v_end = tl.minimum(V, v_start + chunk)
        v_full = v_start + ((v_end - v_start) // BLOCK_V) * BLOCK_V
        offs = tl.arange(0, BLOCK_V)
        m = tl.full([BLOCK_V], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK_V], tl.float32)
        t = tl.zeros([BLOCK_V], tl.float32)
        for v0 in range(v_start, v_full, BLOCK_V):  # full blocks: unmasked, vectorised loads
            x = tl.load(row_ptr + v0 + offs).to(tl.float32)
            m, s, t = _online_update(m, s, t, x)
        if v_full < v_end:  # the tail
            idx = v_full + offs
            x = tl.load(row_ptr + idx, mask=idx < v_end, other=float("-inf")).to(tl.float32)
            m, s, t = _online_update(m, s, t, x)
        M, S, T = _merge(m, s, t)
        if FINAL:
            _finish(row, M, S, T, row_ptr, V, token_ids, tok_stride, C, lse_out, lp_out, ent_out, BLOCK_T)
        else:
            k = row * n_splits + split
            plane = B * n_splits
            tl.store(part + k, M)
            tl.store(part + plane + k, S)
            tl.store(part + 2 * plane + k, T)

    @triton.jit
    def _score_merge_kernel(
        logits, stride_row, V, token_ids, tok_stride, C, lse_out, lp_out, ent_out, part, B, n_splits,
        BLOCK_S: tl.constexpr,
        BLOCK_T: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        j = tl.arange(0, BLOCK_S)
        jmask = j < n_splits
        k = row * n_splits + j
        plane = B * n_splits
        m = tl.load(part + k, mask=jmask, other=float("-inf"))
        s = tl.load(part + plane + k, mask=jmask, other=0.0)
        t = tl.load(part + 2 * plane + k, mask=jmask, other=0.0)
        M, S, T = _merge(m, s, t)
        _finish(row, M, S, T, logits + row * stride_row, V, token_ids, tok_stride, C, lse_out, lp_out, ent_out, BLOCK_T)


_SM_COUNT: dict = {}
MAX_SPLITS = 1024  # programs per row: under the grid's y limit (65535); bounds the merge block
_GRID_Y_MAX = 65535


def _launch_plan(B: int, V: int, device: torch.device, block_v: int | None, splits: int | None):
    """``(block_v, splits, chunk)``: vocabulary block, programs per row (grid y) and vocabulary
    entries per program (a multiple of ``block_v``; ``splits * chunk >= V > (splits - 1) * chunk``).

    ``splits`` is clamped to ``[1, min(blocks, MAX_SPLITS)]`` whatever the overrides ask: the
    grid's y dimension may not exceed 65535 and the merge kernel holds all splits of a row in one
    block."""
    if block_v is None:
        block_v = min(4096, triton.next_power_of_2(V))
    if isinstance(block_v, bool) or not isinstance(block_v, int) or block_v < 1 or block_v & (block_v - 1):
        raise ValueError(f"block_v must be a power of two, got {block_v}")
    n_blocks = triton.cdiv(V, block_v)
    if splits is None:
        splits = max(1, min(n_blocks, (4 * _sm_count(device)) // max(B, 1)))
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    splits = min(splits, n_blocks, MAX_SPLITS, _GRID_Y_MAX)
    chunk = triton.cdiv(n_blocks, splits) * block_v
    splits = triton.cdiv(V, chunk)
    return block_v, splits, chunk


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    key = device.index if device.index is not None else torch.cuda.current_device()
    if key not in _SM_COUNT:
        _SM_COUNT[key] = torch.cuda.get_device_properties(key).multi_processor_count
    return _SM_COUNT[key]


def score_triton(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    block_v: int | None = None,
    splits: int | None = None,
    check_ids: bool = True,
):
    """Triton ``score`` (same contract as :func:`score_reference`), one pass over the vocabulary.

    ``block_v`` (a power of two) and ``splits`` (programs per row) override the launch heuristics;
    they exist for tests and tuning. ``check_ids=False`` skips the range check of ``token_ids``
    (a device->host sync); out-of-range ids then give NaN log-probs instead of an error. Needs CUDA
    tensors, or CPU tensors with ``TRITON_INTERPRET=1`` set before triton was imported.
    """
    if triton is None:
        raise RuntimeError("the Triton kernels need the `triton` package, which is not installed")
    logits, token_ids = _validate_score(logits, token_ids, check_ids)
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    if token_ids.shape[1] > 0 and token_ids.stride(1) != 1:
        token_ids = token_ids.contiguous()
    B, V = logits.shape
    C = token_ids.shape[1]
    device = logits.device
    lse = torch.empty(B, dtype=torch.float32, device=device)
    lp = torch.empty(B, C, dtype=torch.float32, device=device)
    ent = torch.empty(B, dtype=torch.float32, device=device)
    if B == 0:
        return lse, lp, ent
    block_v, splits, chunk = _launch_plan(B, V, device, block_v, splits)
    block_t = max(1, min(128, triton.next_power_of_2(max(C, 1))))
    num_warps = 8 if block_v >= 4096 else 4
    final = splits == 1
    part = lse if final else torch.empty(3, B, splits, dtype=torch.float32, device=device)
    tok_stride = token_ids.stride(0) if C else 0
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        _score_kernel[(B, splits)](
            logits, logits.stride(0), V, chunk, token_ids, tok_stride, C, lse, lp, ent, part, B, splits,
            FINAL=final, BLOCK_V=block_v, BLOCK_T=block_t, num_warps=num_warps,
        )
        if not final:
            _score_merge_kernel[(B,)](
                logits, logits.stride(0), V, token_ids, tok_stride, C, lse, lp, ent, part, B, splits,
                BLOCK_S=triton.next_power_of_2(splits), BLOCK_T=block_t, num_warps=1,
            )
    return lse, lp, ent
