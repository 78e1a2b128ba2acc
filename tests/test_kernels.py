"""Triton kernels vs their torch references.

Where the kernels run: on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``, the
default, what ``make test`` does), or on CUDA tensors with real (compiled) Triton when a GPU is
present and ``TRITON_INTERPRET=0`` is set explicitly (``benchmarks/gpu_check.sh`` does that, and
``test_kernel_suite_on_cuda_with_real_triton`` reruns this file that way whenever a GPU is present).

Copies (kv_copy, kv_gather) must be bitwise equal (torch.equal). Scores are compared in float32
with these tolerances (both sides accumulate in float32, only the summation order differs):
  logsumexp, logprobs: atol=1e-4, rtol=1e-5      entropy: atol=1e-4, rtol=1e-4
"""

import os

import torch

# Before triton is imported anywhere (conftest sets TRITON_INTERPRET=1 unless it is set already).
REAL = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "") == "0"
if not REAL:
    os.environ["TRITON_INTERPRET"] = "1"
DEVICE = torch.device("cuda" if REAL else "cpu")

import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from unittest import mock  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import decodesearch.kernels as K  # noqa: E402
from decodesearch.kernels import dispatch as dispmod  # noqa: E402
from decodesearch.kernels import kv_kernels as kvmod  # noqa: E402
from decodesearch.kernels import score_kernel as scmod  # noqa: E402

HAVE_TRITON = kvmod.triton is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")
needs_real_cuda = pytest.mark.skipif(
    not REAL, reason="CUDA with real Triton only (test_kernel_suite_on_cuda_with_real_triton runs it where a GPU is)"
)


def test_kernels_run_on_the_intended_backend():
    """Interpreted kernels on CPU, compiled kernels on CUDA: never a silent mix of the two."""
    if not HAVE_TRITON:
        pytest.skip("triton not installed")
    assert kvmod.interpreted() == (not REAL)
    assert isinstance(scmod._score_kernel, type(kvmod._kv_copy_kernel))


LSE_TOL = dict(atol=1e-4, rtol=1e-5)
LOGPROB_TOL = dict(atol=1e-4, rtol=1e-5)
ENTROPY_TOL = dict(atol=1e-4, rtol=1e-4)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# On a GPU each new shape class compiles a kernel variant: fewer examples keep the GPU check short.
SETTINGS = settings(max_examples=20 if REAL else 30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------
# strategies
# ------------------------------------------------------------------------------------------------


def _make_tensor(rows, heads, cap, hd, dtype, layout, gen):
    """A [rows, heads, cap, hd] tensor, contiguous or a strided view, with random values."""
    if layout == "contiguous":
        t = torch.randn(rows, heads, cap, hd, generator=gen)
    elif layout == "padded":  # a view into larger capacity / head_dim: non-trivial strides
        t = torch.randn(rows, heads, cap + 3, hd + 2, generator=gen)[:, :, :cap, :hd]
    else:  # "transposed": head_dim is not the unit-stride dim
        t = torch.randn(rows, heads, hd, cap, generator=gen).transpose(2, 3)
    t = t.to(dtype) if dtype != torch.float32 else t
    return t.to(DEVICE)


@st.composite
def kv_layers(draw):
    rows = draw(st.integers(1, 6))
    n_layers = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(["contiguous", "contiguous", "padded", "transposed"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    shared = draw(st.booleans())  # all tensors one shape, or each its own
    dims = st.tuples(st.integers(1, 3), st.integers(1, 12), st.sampled_from([1, 3, 5, 7, 8, 12, 16]))
    base = draw(dims)
    ks, vs = [], []
    for _ in range(n_layers):
        for out in (ks, vs):
            heads, cap, hd = base if shared else draw(dims)
            out.append(_make_tensor(rows, heads, cap, hd, dtype, layout, gen))
    return ks, vs


def _index(draw, values):
    kind = draw(st.sampled_from(["int32", "int64", "list"]))
    if kind == "list":
        return list(values)
    on = draw(st.sampled_from(["cpu", DEVICE]))  # host or device index tensors
    return torch.tensor(list(values), dtype=torch.int32 if kind == "int32" else torch.int64, device=on)


@st.composite
def copy_case(draw):
    ks, vs = draw(kv_layers())
    rows = ks[0].shape[0]
    perm = draw(st.permutations(range(rows)))
    n_dst = draw(st.integers(0, rows - 1)) if rows > 1 else 0
    dst = perm[:n_dst]
    pool = perm[n_dst:]
    src = [draw(st.sampled_from(pool)) for _ in dst]  # repeats allowed: fork one row into many
    cap = min(t.shape[2] for t in ks + vs)
    ncols = draw(st.integers(0, cap))
    return ks, vs, _index(draw, src), _index(draw, dst), ncols


@st.composite
def gather_case(draw):
    ks, vs = draw(kv_layers())
    rows = ks[0].shape[0]
    cap = min(t.shape[2] for t in ks + vs)
    listed = draw(st.lists(st.integers(0, rows - 1), unique=True, max_size=rows))
    cols = [sorted(draw(st.sets(st.integers(0, cap - 1), max_size=cap))) for _ in listed]
    width = max([len(c) for c in cols], default=0) + draw(st.integers(0, 2))
    index_dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    pad = draw(st.sampled_from([-1, 0, 10**6]))  # padding past col_count is ignored
    index = torch.full((len(listed), width), pad, dtype=index_dtype)
    for i, c in enumerate(cols):
        index[i, : len(c)] = torch.tensor(c, dtype=index_dtype)
    count = torch.tensor([len(c) for c in cols], dtype=index_dtype)
    return ks, vs, _index(draw, listed), index, count, cols


def _clone(ts):
    return [t.clone() for t in ts]


# ------------------------------------------------------------------------------------------------
# kv_copy / kv_gather
# ------------------------------------------------------------------------------------------------


# Bytes one program moves per tile / gather step; tiny tiles split these small shapes into many
# column blocks (kv_copy) and many loop steps (kv_gather), the paths real head dims take.
TILE_BYTES = st.sampled_from([kvmod._TILE_BYTES, 16, 64, 256])


@needs_triton
@SETTINGS
@given(copy_case(), TILE_BYTES)
def test_kv_copy_triton_matches_reference(case, tile):
    ks, vs, src, dst, ncols = case
    n = len(ks)
    orig = _clone(ks + vs)
    ref, tri = _clone(ks + vs), _clone(ks + vs)
    K.kv_copy_reference(ref[:n], ref[n:], src, dst, ncols)
    with mock.patch.object(kvmod, "_TILE_BYTES", tile):
        kvmod.kv_copy_triton(tri[:n], tri[n:], src, dst, ncols)
    src_l = [int(v) for v in src]
    dst_l = [int(v) for v in dst]
    for o, r, t in zip(orig, ref, tri):
        assert torch.equal(r, t)
        # independent check of the contract
        for s, d in zip(src_l, dst_l):
            assert torch.equal(t[d, :, :ncols], o[s, :, :ncols])
            assert torch.equal(t[d, :, ncols:], o[d, :, ncols:])
        others = [i for i in range(o.shape[0]) if i not in dst_l]
        assert torch.equal(t[others], o[others])


@needs_triton
@SETTINGS
@given(gather_case(), TILE_BYTES)
def test_kv_gather_triton_matches_reference(case, tile):
    ks, vs, rows, index, count, cols = case
    n = len(ks)
    orig = _clone(ks + vs)
    ref, tri = _clone(ks + vs), _clone(ks + vs)
    K.kv_gather_reference(ref[:n], ref[n:], rows, index, count)
    with mock.patch.object(kvmod, "_TILE_BYTES", tile):
        kvmod.kv_gather_triton(tri[:n], tri[n:], rows, index, count)
    rows_l = [int(v) for v in rows]
    for o, r, t in zip(orig, ref, tri):
        assert torch.equal(r, t)
        for row, c in zip(rows_l, cols):
            assert torch.equal(t[row, :, : len(c)], o[row][:, c])
        others = [i for i in range(o.shape[0]) if i not in rows_l]
        assert torch.equal(t[others], o[others])


@needs_triton
def test_kv_copy_single_launch_many_layers_mixed_shapes():
    """32 layers with per-pair different heads/head_dim/capacity, one call, fork one row to three."""
    gen = torch.Generator().manual_seed(0)
    ks = [torch.randn(5, 1 + i % 3, 6 + i % 4, 3 + i % 5, generator=gen).to(DEVICE, torch.bfloat16) for i in range(32)]
    vs = [torch.randn(5, 2, 7, 4, generator=gen).to(DEVICE, torch.bfloat16) for _ in range(32)]
    ref, tri = _clone(ks + vs), _clone(ks + vs)
    src, dst = torch.tensor([1, 1, 1], dtype=torch.int32), torch.tensor([0, 3, 4], dtype=torch.int32)
    K.kv_copy_reference(ref[:32], ref[32:], src, dst, 6)
    kvmod.kv_copy_triton(tri[:32], tri[32:], src, dst, 6)
    assert all(torch.equal(r, t) for r, t in zip(ref, tri))


def _small_layers(dtype=torch.float32, rows=4, cap=8):
    gen = torch.Generator().manual_seed(1)
    ks = [torch.randn(rows, 2, cap, 4, generator=gen).to(dtype).to(DEVICE) for _ in range(2)]
    vs = [torch.randn(rows, 2, cap, 4, generator=gen).to(dtype).to(DEVICE) for _ in range(2)]
    return ks, vs


IMPLS_COPY = [K.kv_copy_reference, K.kv_copy] + ([kvmod.kv_copy_triton] if HAVE_TRITON else [])
IMPLS_GATHER = [K.kv_gather_reference, K.kv_gather] + ([kvmod.kv_gather_triton] if HAVE_TRITON else [])
IMPLS_SCORE = [K.score_reference, K.score] + ([scmod.score_triton] if HAVE_TRITON else [])


@pytest.mark.parametrize("impl", IMPLS_COPY)
@pytest.mark.parametrize(
    "src, dst, ncols, match",
    [
        ([0, 1], [1, 2], 8, "both src_rows and dst_rows"),
        ([0], [0], 8, "both src_rows and dst_rows"),
        ([4], [1], 8, r"src_rows contains row 4; accepted range is \[0, 4\)"),
        ([0], [-1], 8, r"dst_rows contains row -1; accepted range is \[0, 4\)"),
        ([0], [1], 9, r"ncols=9 is out of range; accepted range is \[0, 8\]"),
        ([0], [1], -1, r"ncols=-1 is out of range"),
        ([0, 0], [1, 1], 8, "dst_rows lists row 1 more than once"),
        ([0, 1], [2], 8, "equal length"),
    ],
)
def test_kv_copy_bad_input(impl, src, dst, ncols, match):
    ks, vs = _small_layers()
    before = _clone(ks + vs)
    with pytest.raises(ValueError, match=match):
        impl(ks, vs, torch.tensor(src, dtype=torch.int32), dst, ncols)
    assert all(torch.equal(a, b) for a, b in zip(before, ks + vs))  # nothing written


@pytest.mark.parametrize("impl", IMPLS_COPY)
def test_kv_copy_bad_tensors(impl):
    ks, vs = _small_layers()
    with pytest.raises(ValueError, match="equal length"):
        impl(ks, vs[:1], [0], [1], 1)
    with pytest.raises(ValueError, match="dtype"):
        impl(ks, [vs[0], vs[1].half()], [0], [1], 1)
    with pytest.raises(ValueError, match="rows"):
        impl(ks, [vs[0], vs[1][:3]], [0], [1], 1)
    with pytest.raises(ValueError, match="4-D"):
        impl(ks, [vs[0], vs[1][0]], [0], [1], 1)
    with pytest.raises(ValueError, match="src_rows must be an int32 or int64"):
        impl(ks, vs, torch.tensor([0.0]), [1], 1)


@pytest.mark.parametrize("impl", IMPLS_COPY)
def test_kv_copy_empty_is_noop(impl):
    ks, vs = _small_layers()
    before = _clone(ks + vs)
    impl(ks, vs, torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int32), 8)
    impl(ks, vs, [], [], 0)
    impl(ks, vs, [0], [1], 0)
    assert all(torch.equal(a, b) for a, b in zip(before, ks + vs))


@pytest.mark.parametrize("impl", IMPLS_GATHER)
@pytest.mark.parametrize(
    "rows, index, count, match",
    [
        ([0], [[3, 1]], [2], r"col_index\[0\] is not strictly increasing"),
        ([0], [[1, 1]], [2], r"col_index\[0\] is not strictly increasing"),
        ([0], [[1, 8]], [2], r"col_index\[0, 1\]=8 is out of range; accepted range is \[0, 8\)"),
        ([0], [[-1, 2]], [2], r"col_index\[0, 0\]=-1 is out of range"),
        ([0], [[1, 2]], [3], r"col_count\[0\]=3 is out of range; accepted range is \[0, 2\]"),
        ([5], [[1, 2]], [2], r"rows contains row 5; accepted range is \[0, 4\)"),
        ([1, 1], [[1, 2], [1, 2]], [2, 2], "rows lists row 1 more than once"),
        ([0, 1], [[1, 2]], [2, 2], r"col_index must have shape \[len\(rows\)=2"),
    ],
)
def test_kv_gather_bad_input(impl, rows, index, count, match):
    ks, vs = _small_layers()
    before = _clone(ks + vs)
    with pytest.raises(ValueError, match=match):
        impl(ks, vs, rows, torch.tensor(index), torch.tensor(count))
    assert all(torch.equal(a, b) for a, b in zip(before, ks + vs))


@pytest.mark.parametrize("impl", IMPLS_GATHER)
def test_kv_gather_rejects_aliased_tensors(impl):
    ks, vs = _small_layers()
    with pytest.raises(ValueError, match="in place"):
        impl(ks, [ks[0], vs[1]], [0], torch.tensor([[1, 2]]), torch.tensor([2]))


def _launch_log(monkeypatch, module, kernel_name):
    """Wrap ``module.kernel_name`` so every launch records (grid, constexpr/keyword args)."""
    log = []
    real = getattr(module, kernel_name)

    class Recorder:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                log.append((tuple(grid), kw))
                return real[grid](*args, **kw)

            return launch

    monkeypatch.setattr(module, kernel_name, Recorder())
    return log


@needs_triton
@pytest.mark.parametrize(
    "dtype, heads, head_dim, cap, layout",
    [(torch.float32, 2, 128, 100, "contiguous"), (torch.bfloat16, 1, 64, 300, "padded"),
     (torch.float16, 2, 96, 200, "transposed")],
    ids=["fp32-hd128", "bf16-hd64-padded", "fp16-hd96-transposed"],
)
def test_kv_copy_and_gather_multi_block_at_real_head_dims(monkeypatch, dtype, heads, head_dim, cap, layout):
    """Real head dims with the default tile: kv_copy splits the columns over several blocks and
    kv_gather walks several steps per row (the launches are checked, so the premise cannot rot)."""
    gen = torch.Generator().manual_seed(7)
    rows, n_layers = 4, 2
    ks = [_make_tensor(rows, heads, cap, head_dim, dtype, layout, gen) for _ in range(n_layers)]
    vs = [_make_tensor(rows, heads, cap, head_dim, dtype, layout, gen) for _ in range(n_layers)]
    copy_log = _launch_log(monkeypatch, kvmod, "_kv_copy_kernel")
    gather_log = _launch_log(monkeypatch, kvmod, "_kv_gather_kernel")

    ref, tri = _clone(ks + vs), _clone(ks + vs)
    K.kv_copy_reference(ref[:n_layers], ref[n_layers:], [1, 1], [0, 3], cap - 1)
    kvmod.kv_copy_triton(tri[:n_layers], tri[n_layers:], [1, 1], [0, 3], cap - 1)
    assert all(torch.equal(r, t) for r, t in zip(ref, tri))
    (grid, kw), = copy_log
    assert grid[0] == 2 * -(-(cap - 1) // kw["BLOCK_C"]) and kw["BLOCK_C"] < cap - 1  # several column blocks

    g = torch.Generator().manual_seed(8)
    cols = [sorted(torch.randperm(cap, generator=g)[: cap - 3].tolist()), list(range(5, cap))]
    width = max(map(len, cols))
    index = torch.zeros(2, width, dtype=torch.int64)
    for i, c in enumerate(cols):
        index[i, : len(c)] = torch.tensor(c)
    count = torch.tensor([len(c) for c in cols])
    K.kv_gather_reference(ref[:n_layers], ref[n_layers:], [2, 0], index, count)
    kvmod.kv_gather_triton(tri[:n_layers], tri[n_layers:], [2, 0], index, count)
    assert all(torch.equal(r, t) for r, t in zip(ref, tri))
    (grid, kw), = gather_log
    assert kw["BLOCK_C"] * 2 < width  # several loop steps per row


def test_table_cache_keys_on_dtype():
    """Two dtypes on one pointer, shape and strides: the fp16 view (head_dim 12 = 24 bytes) is not
    16-byte aligned even though the fp32 view (48 bytes) was; the cached flag must not leak."""
    kvmod._TABLE_CACHE.clear()
    shape = (2, 1, 4, 12)
    n = 2 * 4 * 12
    buf = torch.zeros(4 * n, dtype=torch.uint8, device=DEVICE)
    f32 = buf.view(torch.float32).view(shape)
    f16 = buf.view(torch.float16)[:n].view(shape)
    assert f32.data_ptr() == f16.data_ptr() and f32.stride() == f16.stride()
    assert kvmod._table([f32])[4] is True
    assert kvmod._table([f16])[4] is False
    assert kvmod._table([f32])[4] is True  # both stay cached, each with its own flag


@needs_triton
def test_triton_rejects_element_sizes_it_cannot_move(monkeypatch, fresh_dispatch):
    """complex128 (16-byte elements) would be moved as 8-byte integers: the Triton path refuses it,
    the dispatcher's automatic mode hands it to the reference. complex64 (8 bytes) is fine."""
    gen = torch.Generator().manual_seed(2)
    ks = [torch.randn(3, 1, 5, 4, dtype=torch.complex128, generator=gen).to(DEVICE)]
    vs = [torch.randn(3, 1, 5, 4, dtype=torch.complex128, generator=gen).to(DEVICE)]
    before = _clone(ks + vs)
    with pytest.raises(ValueError, match=r"layers_k\[0\] has dtype torch.complex128 \(16-byte elements\)"):
        kvmod.kv_copy_triton(ks, vs, [0], [1], 5)
    with pytest.raises(ValueError, match=r"layers_k\[0\] has dtype torch.complex128"):
        kvmod.kv_gather_triton(ks, vs, [0], torch.tensor([[1, 3]]), torch.tensor([2]))
    assert all(torch.equal(a, b) for a, b in zip(before, ks + vs))
    monkeypatch.delenv("DECODESEARCH_KERNELS", raising=False)
    K.kv_copy(ks, vs, [0], [1], 5)
    assert torch.equal(ks[0][1], ks[0][0]) and torch.equal(vs[0][1], vs[0][0])
    c64 = [t.to(torch.complex64) for t in before]
    ref, tri = _clone(c64), _clone(c64)
    K.kv_copy_reference(ref[:1], ref[1:], [2], [0], 4)
    kvmod.kv_copy_triton(tri[:1], tri[1:], [2], [0], 4)
    assert all(torch.equal(a, b) for a, b in zip(ref, tri))


def _overlapping_views():
    base = torch.randn(200, device=DEVICE)
    return {
        "expanded rows": torch.randn(1, 2, 8, 4, device=DEVICE).expand(4, 2, 8, 4),
        "stride-0 head_dim": torch.randn(4, 2, 8, 1, device=DEVICE).expand(4, 2, 8, 4),
        "columns overlap": base.as_strided((4, 2, 8, 4), (48, 24, 2, 1)),
    }


@pytest.mark.parametrize("impl", IMPLS_COPY + IMPLS_GATHER,
                         ids=lambda f: f.__module__.split(".")[-1] + "." + f.__name__)
@pytest.mark.parametrize("view", list(_overlapping_views()))
def test_internally_overlapping_tensors_are_rejected(impl, view):
    """Expanded / stride-0 / overlapping views would race in the in-place kernels: a ValueError
    naming the tensor, before anything is written, from every implementation."""
    ks, vs = _small_layers()
    bad = _overlapping_views()[view]
    before = _clone(ks + vs)
    args = ([0], [1], 8) if "copy" in impl.__name__ else ([0], torch.tensor([[1, 2]]), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"layers_v\[1\] has internally overlapping memory"):
        impl(ks, [vs[0], bad], *args)
    assert all(torch.equal(a, b) for a, b in zip(before, ks + vs))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 12)), min_size=1, max_size=4))
def test_overlap_check_is_sound(dims):
    """Whenever two elements share an address, the check says so (brute force over all offsets)."""
    shape = [d[0] for d in dims]
    strides = [d[1] for d in dims]
    t = torch.zeros(200).as_strided(shape, strides)
    offsets = {0}
    for size, stride in zip(shape, strides):
        offsets = {o + i * stride for o in offsets for i in range(size)}
    if len(offsets) < t.numel():
        assert kvmod._may_overlap_internally(t)
    if t.is_contiguous() or all(s == 1 for s in shape):
        assert not kvmod._may_overlap_internally(t)


def test_uploads_are_pinned_and_non_blocking_on_cuda():
    """Index/meta uploads to a GPU go through pinned memory with non_blocking=True (no stream
    sync); on CPU they are a plain copy."""

    class Host:
        def __init__(self):
            self.calls = []

        def pin_memory(self):
            self.calls.append("pin_memory")
            return self

        def to(self, device, non_blocking=False):
            self.calls.append(("to", str(device), non_blocking))
            return self

    h = Host()
    kvmod._upload(h, torch.device("cuda:0"))
    assert h.calls == ["pin_memory", ("to", "cuda:0", True)]
    h = Host()
    kvmod._upload(h, torch.device("cpu"))
    assert h.calls == [("to", "cpu", False)]


@needs_triton
@needs_real_cuda
def test_kernels_do_not_sync_the_stream():
    """With host indices, neither kernel waits for the GPU (torch raises on any synchronising call)."""
    ks, vs = _small_layers(torch.bfloat16)
    logits = torch.randn(4, 1000, device=DEVICE)
    ids = torch.tensor([[1, 2]] * 4)
    for _ in range(2):  # first round compiles and fills the table cache
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            kvmod.kv_copy_triton(ks, vs, [0], [1], 8)
            kvmod.kv_gather_triton(ks, vs, [2], torch.tensor([[1, 3]]), torch.tensor([2]))
            scmod.score_triton(logits, ids, check_ids=False)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert torch.equal(ks[0][1], ks[0][0])


@pytest.mark.skipif(not torch.cuda.is_available() or REAL, reason="needs a GPU (this process interprets)")
def test_kernel_suite_on_cuda_with_real_triton(tmp_path):
    """On a GPU machine, rerun this file on CUDA tensors with compiled Triton kernels."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    env.pop("DECODESEARCH_KERNELS", None)
    # cwd outside the repository: `python -m` puts cwd on sys.path, and the repository root holds
    # kernels/, which transformers would import as the `kernels` package
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


# ------------------------------------------------------------------------------------------------
# score
# ------------------------------------------------------------------------------------------------


def _assert_scores_close(a, b):
    lse_a, lp_a, ent_a = a
    lse_b, lp_b, ent_b = b
    for x in (lse_b, lp_b, ent_b):
        assert x.dtype == torch.float32
    assert lp_a.shape == lp_b.shape
    torch.testing.assert_close(lse_b, lse_a, **LSE_TOL)
    torch.testing.assert_close(lp_b, lp_a, **LOGPROB_TOL)
    torch.testing.assert_close(ent_b, ent_a, **ENTROPY_TOL)


@st.composite
def score_case(draw):
    B = draw(st.integers(1, 4))
    V = draw(st.one_of(st.sampled_from([1, 2, 3, 17, 127, 129, 255, 257]), st.integers(1, 700)))
    C = draw(st.integers(0, 6))
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.sampled_from([0.01, 1.0, 5.0, 30.0]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = (torch.randn(B, V, generator=gen) * scale).to(DEVICE, dtype)
    if V > 1 and draw(st.booleans()):  # masked vocabulary entries (e.g. after top-k), never a whole row
        drop = torch.rand(B, V, generator=gen) < 0.5
        drop[:, 0] = False
        logits = logits.masked_fill(drop.to(DEVICE), float("-inf"))
    if draw(st.booleans()):  # a row-strided view, as logits[:, -1] of [B, T, V] would be
        wide = torch.zeros(B, V + 5, dtype=dtype, device=DEVICE)
        wide[:, 2 : 2 + V] = logits
        logits = wide[:, 2 : 2 + V]
    ids = torch.randint(0, V, (B, C), generator=gen, dtype=draw(st.sampled_from([torch.int32, torch.int64])))
    ids = ids.to(draw(st.sampled_from(["cpu", DEVICE])))
    block_v = draw(st.sampled_from([None, 16, 64, 128]))
    splits = draw(st.sampled_from([None, 1, 2, 3, 5]))
    return logits, ids, block_v, splits


@needs_triton
@SETTINGS
@given(score_case())
def test_score_triton_matches_reference(case):
    logits, ids, block_v, splits = case
    ref = K.score_reference(logits, ids)
    tri = scmod.score_triton(logits, ids, block_v=block_v, splits=splits)
    _assert_scores_close(ref, tri)


def test_score_reference_definitions():
    """The reference itself against first principles (float64)."""
    x = torch.randn(3, 50, dtype=torch.float64) * 4
    ids = torch.tensor([[0, 49], [7, 7], [1, 2]])
    lse, lp, ent = K.score_reference(x.float(), ids)
    p = torch.softmax(x, -1)
    torch.testing.assert_close(lse, torch.logsumexp(x, -1).float())
    torch.testing.assert_close(lp, torch.log(p).gather(1, ids).float())
    torch.testing.assert_close(ent, (-(p * p.log()).sum(-1)).float())


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
def test_score_large_vocab(dtype):
    """256k vocabulary, default launch heuristics and the split path, with a one-hot-ish row."""
    V = 262144
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, V, generator=gen) * 3).to(DEVICE, dtype)
    logits[1, 12345] = 60.0
    ids = torch.tensor([[0, V - 1, 12345], [12345, 1, 2]], dtype=torch.int64, device=DEVICE)
    ref = K.score_reference(logits, ids)
    _assert_scores_close(ref, scmod.score_triton(logits, ids))
    _assert_scores_close(ref, scmod.score_triton(logits, ids, splits=7))


@needs_triton
@pytest.mark.parametrize("V, block_v, splits", [(2**20, 1, 10**6), (152064, 1, None), (2**31 - 1, 1, 70000),
                                                (1500, 1, 5000), (152064, 4096, 10**6)])
def test_score_launch_plan_is_clamped(V, block_v, splits):
    """Whatever the overrides ask, the grid's y (splits) stays <= 65535 and the merge block bounded,
    and the splits still cover the vocabulary exactly."""
    for B in (1, 3):
        bv, n, chunk = scmod._launch_plan(B, V, torch.device("cpu"), block_v, splits)
        assert 1 <= n <= scmod.MAX_SPLITS <= 65535
        assert chunk % bv == 0 and n * chunk >= V > (n - 1) * chunk


@needs_triton
def test_score_split_override_is_clamped_at_launch(monkeypatch):
    """splits=5000 over 600 one-entry blocks: at most MAX_SPLITS programs per row (and a merge
    block of at most MAX_SPLITS), with the same results."""
    monkeypatch.setattr(scmod, "MAX_SPLITS", 64)  # the same clamp, cheaper to interpret
    log = _launch_log(monkeypatch, scmod, "_score_kernel")
    merge_log = _launch_log(monkeypatch, scmod, "_score_merge_kernel")
    gen = torch.Generator().manual_seed(4)
    logits = (torch.randn(2, 600, generator=gen) * 3).to(DEVICE)
    ids = torch.tensor([[0, 599], [300, 3]], device=DEVICE)
    got = scmod.score_triton(logits, ids, block_v=1, splits=5000)
    (grid, _), = log
    (_, merge_kw), = merge_log
    assert 1 < grid[1] <= 64 and merge_kw["BLOCK_S"] <= 64
    _assert_scores_close(K.score_reference(logits, ids), got)


@pytest.mark.parametrize("impl", IMPLS_SCORE)
def test_score_bad_input(impl):
    x = torch.randn(2, 10, device=DEVICE)
    with pytest.raises(ValueError, match=r"token_ids contains 10; accepted range is \[0, 10\)"):
        impl(x, torch.tensor([[0], [10]]))
    with pytest.raises(ValueError, match=r"token_ids contains -1"):
        impl(x, torch.tensor([[0], [-1]]))
    with pytest.raises(ValueError, match="int32 or int64"):
        impl(x, torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"token_ids must be a 2-D tensor \[B=2, C\]"):
        impl(x, torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        impl(x.double(), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"2-D tensor \[B, V\]"):
        impl(x[0], torch.zeros(2, 1, dtype=torch.long))


@needs_triton
def test_score_unchecked_ids_are_memory_safe():
    x = torch.randn(2, 10, device=DEVICE)
    lse, lp, ent = scmod.score_triton(x, torch.tensor([[3, 10], [-5, 9]], device=DEVICE), check_ids=False, splits=1)
    assert torch.isnan(lp[0, 1]) and torch.isnan(lp[1, 0])
    torch.testing.assert_close(lp[0, 0], torch.log_softmax(x[0], -1)[3], **LOGPROB_TOL)


@pytest.mark.parametrize("impl", IMPLS_SCORE)
def test_score_empty_candidates(impl):
    lse, lp, ent = impl(torch.randn(3, 33, dtype=torch.bfloat16, device=DEVICE), torch.zeros(3, 0, dtype=torch.int32))
    assert lse.shape == (3,) and lp.shape == (3, 0) and ent.shape == (3,)


# ------------------------------------------------------------------------------------------------
# dispatcher
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """The dispatcher's per-process memory (failed devices, warnings given) emptied for one test."""
    monkeypatch.setattr(dispmod, "_FAILED", {})
    monkeypatch.setattr(dispmod, "_WARNED", set())
    return dispmod


def test_dispatch_env_var(monkeypatch, fresh_dispatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("DECODESEARCH_KERNELS", raising=False)
    assert K.backend_for(cpu) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # interpreted kernels on CUDA warn (tested below)
        assert K.backend_for(cuda) == ("triton" if HAVE_TRITON and REAL else "reference")
    monkeypatch.setenv("DECODESEARCH_KERNELS", "reference")
    assert K.backend_for(cuda) == "reference"
    monkeypatch.setenv("DECODESEARCH_KERNELS", "bogus")
    with pytest.raises(ValueError, match=r"DECODESEARCH_KERNELS='bogus'.*'reference', 'triton'"):
        K.backend_for(cpu)
    with pytest.raises(ValueError, match="DECODESEARCH_KERNELS"):
        K.score(torch.randn(1, 4), torch.zeros(1, 1, dtype=torch.long))
    if HAVE_TRITON:
        monkeypatch.setenv("DECODESEARCH_KERNELS", "triton")
        if REAL:
            assert K.backend_for(cuda) == "triton"
            with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):  # compiled kernels: no CPU tensors
                K.backend_for(cpu)
        else:
            assert K.backend_for(cpu) == "triton"  # TRITON_INTERPRET=1 here
            with pytest.raises(RuntimeError, match="never runs CUDA tensors"):
                K.backend_for(cuda)
            monkeypatch.setenv("TRITON_INTERPRET", "0")
            with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
                K.backend_for(cpu)


def _spy_backends(monkeypatch, calls, fail_triton=None):
    """Record which implementation each public call reaches; ``fail_triton``: an exception the
    Triton implementations raise after validating their arguments, where they would compile and
    launch (a compile failure)."""
    for mod, names in ((kvmod, ["kv_copy", "kv_gather"]), (scmod, ["score"])):
        for name in names:
            for kind in ("reference", "triton"):
                fn = getattr(mod, f"{name}_{kind}")
                monkeypatch.setattr(mod, f"{name}_{kind}",
                                    lambda *a, _fn=fn, _k=kind, **kw: (calls.append(_k), _fn(*a, **kw))[1])
    if fail_triton is not None:
        def fail(*a, **kw):
            raise fail_triton

        monkeypatch.setattr(kvmod, "_check_triton_tensors", fail)
        monkeypatch.setattr(scmod, "_launch_plan", fail)


@needs_triton
@pytest.mark.parametrize("forced", [None, "reference", "triton"])
def test_dispatch_routes_calls(monkeypatch, fresh_dispatch, forced):
    calls = []
    _spy_backends(monkeypatch, calls)
    if forced is None:
        monkeypatch.delenv("DECODESEARCH_KERNELS", raising=False)
    else:
        monkeypatch.setenv("DECODESEARCH_KERNELS", forced)
    ks, vs = _small_layers(torch.float16)
    K.kv_copy(ks, vs, [0], [1], 8)
    K.kv_gather(ks, vs, [2], torch.tensor([[1, 3]]), torch.tensor([2]))
    lse, lp, ent = K.score(torch.randn(2, 9, device=DEVICE), torch.tensor([[1], [8]]))
    # CPU tensors: reference unless forced; CUDA tensors (real Triton): triton unless forced otherwise
    expected = "triton" if forced == "triton" or (forced is None and REAL) else "reference"
    assert calls == [expected] * 3
    assert torch.equal(ks[0][1], ks[0][0]) and lp.shape == (2, 1)


@needs_triton
def test_dispatch_falls_back_when_triton_cannot_compile(monkeypatch, fresh_dispatch):
    """Automatic mode: a Triton compile/launch failure on a device warns once and uses the torch
    reference on that device from then on; a broken contract (ValueError) still raises; a forced
    ``triton`` backend raises the failure instead of hiding it."""
    monkeypatch.delenv("DECODESEARCH_KERNELS", raising=False)
    monkeypatch.setattr(dispmod, "_auto_backend", lambda device: "triton")  # as on a GPU
    calls = []
    _spy_backends(monkeypatch, calls, fail_triton=RuntimeError("PTX .version 8.7 does not support .target sm_52"))
    ks, vs = _small_layers(torch.float16)
    ref = _clone(ks + vs)
    with pytest.raises(ValueError, match="ncols=99"):  # not the device's fault: no fallback, no memory
        K.kv_copy(ks, vs, [0], [1], 99)
    assert dispmod._FAILED == {} and calls == ["triton"]
    calls.clear()
    with pytest.warns(RuntimeWarning, match=r"kv_copy kernel cannot run on .*sm_52.*torch reference"):
        K.kv_copy(ks, vs, [0], [1], 8)
    assert calls == ["triton", "reference"]
    K.kv_copy_reference(ref[:2], ref[2:], [0], [1], 8)
    assert all(torch.equal(a, b) for a, b in zip(ref, ks + vs))
    assert K.backend_for(DEVICE) == "reference"
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        K.kv_gather(ks, vs, [2], torch.tensor([[1, 3]]), torch.tensor([2]))
        lse, lp, ent = K.score(torch.randn(2, 9, device=DEVICE), torch.tensor([[1], [8]]))
    assert calls == ["reference", "reference"]  # the failed device is never tried again
    monkeypatch.setattr(dispmod, "_FAILED", {})
    monkeypatch.setenv("DECODESEARCH_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="sm_52"):
        K.score(torch.randn(2, 9, device=DEVICE), torch.tensor([[1], [8]]))


@needs_triton
def test_dispatch_never_interprets_cuda_tensors(monkeypatch, fresh_dispatch):
    """Kernels defined under TRITON_INTERPRET=1 never get CUDA tensors: automatic mode uses the
    reference (one warning per device), a forced ``triton`` raises."""
    monkeypatch.delenv("DECODESEARCH_KERNELS", raising=False)
    monkeypatch.setattr(dispmod, "_interpreted", lambda: True)  # as under `make test` on a GPU machine
    cuda = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match="TRITON_INTERPRET=1.*torch reference"):
        assert K.backend_for(cuda) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert K.backend_for(cuda) == "reference"  # warned once
    monkeypatch.setenv("DECODESEARCH_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="never runs CUDA tensors"):
        K.backend_for(cuda)
    if REAL:  # real CUDA tensors reach the reference
        monkeypatch.delenv("DECODESEARCH_KERNELS")
        calls = []
        _spy_backends(monkeypatch, calls)
        K.score(torch.randn(2, 9, device=DEVICE), torch.tensor([[1], [8]], device=DEVICE))
        assert calls == ["reference"]


def test_import_without_triton():
    """`import decodesearch.kernels` and the reference path work where triton is absent."""
    code = r"""
import sys, os
sys.modules["triton"] = None  # makes `import triton` raise ImportError
os.environ.pop("DECODESEARCH_KERNELS", None)
import torch
import decodesearch.kernels as K
ks = [torch.zeros(3, 1, 4, 2)]; vs = [torch.ones(3, 1, 4, 2)]
ks[0][0] = 5
K.kv_copy(ks, vs, [0], [2], 4)
assert torch.equal(ks[0][2], ks[0][0])
K.kv_gather(ks, vs, [1], torch.tensor([[1, 3]]), torch.tensor([2]))
K.score(torch.randn(2, 5), torch.tensor([[1], [2]]))
assert K.backend_for(torch.device("cuda")) == "reference"
os.environ["DECODESEARCH_KERNELS"] = "triton"
try:
    K.backend_for(torch.device("cpu"))
except RuntimeError as e:
    assert "not installed" in str(e)
else:
    raise AssertionError("expected RuntimeError")
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
