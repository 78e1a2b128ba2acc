"""Triton kernels vs their torch references, under the Triton interpreter on CPU tensors.

Copies (kv_copy, kv_gather) must be bitwise equal (torch.equal). Scores are compared in float32
with these tolerances (both sides accumulate in float32, only the summation order differs):
  logsumexp, logprobs: atol=1e-4, rtol=1e-5      entropy: atol=1e-4, rtol=1e-4
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import decodesearch.kernels as K
from decodesearch.kernels import kv_kernels as kvmod
from decodesearch.kernels import score_kernel as scmod

HAVE_TRITON = kvmod.triton is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")
if HAVE_TRITON:
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(kvmod._kv_copy_kernel, InterpretedFunction):  # imported before the env var
        needs_triton = pytest.mark.skip(reason="decodesearch.kernels was imported without TRITON_INTERPRET=1")

LSE_TOL = dict(atol=1e-4, rtol=1e-5)
LOGPROB_TOL = dict(atol=1e-4, rtol=1e-5)
ENTROPY_TOL = dict(atol=1e-4, rtol=1e-4)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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
    return t.to(dtype) if dtype != torch.float32 else t


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
    return torch.tensor(list(values), dtype=torch.int32 if kind == "int32" else torch.int64)


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


@needs_triton
@SETTINGS
@given(copy_case())
def test_kv_copy_triton_matches_reference(case):
    ks, vs, src, dst, ncols = case
    n = len(ks)
    orig = _clone(ks + vs)
    ref, tri = _clone(ks + vs), _clone(ks + vs)
    K.kv_copy_reference(ref[:n], ref[n:], src, dst, ncols)
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
@given(gather_case())
def test_kv_gather_triton_matches_reference(case):
    ks, vs, rows, index, count, cols = case
    n = len(ks)
    orig = _clone(ks + vs)
    ref, tri = _clone(ks + vs), _clone(ks + vs)
    K.kv_gather_reference(ref[:n], ref[n:], rows, index, count)
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
    ks = [torch.randn(5, 1 + i % 3, 6 + i % 4, 3 + i % 5, generator=gen).to(torch.bfloat16) for i in range(32)]
    vs = [torch.randn(5, 2, 7, 4, generator=gen).to(torch.bfloat16) for _ in range(32)]
    ref, tri = _clone(ks + vs), _clone(ks + vs)
    src, dst = torch.tensor([1, 1, 1], dtype=torch.int32), torch.tensor([0, 3, 4], dtype=torch.int32)
    K.kv_copy_reference(ref[:32], ref[32:], src, dst, 6)
    kvmod.kv_copy_triton(tri[:32], tri[32:], src, dst, 6)
    assert all(torch.equal(r, t) for r, t in zip(ref, tri))


def _small_layers(dtype=torch.float32, rows=4, cap=8):
    gen = torch.Generator().manual_seed(1)
    ks = [torch.randn(rows, 2, cap, 4, generator=gen).to(dtype) for _ in range(2)]
    vs = [torch.randn(rows, 2, cap, 4, generator=gen).to(dtype) for _ in range(2)]
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
    logits = (torch.randn(B, V, generator=gen) * scale).to(dtype)
    if V > 1 and draw(st.booleans()):  # masked vocabulary entries (e.g. after top-k), never a whole row
        drop = torch.rand(B, V, generator=gen) < 0.5
        drop[:, 0] = False
        logits = logits.masked_fill(drop, float("-inf"))
    if draw(st.booleans()):  # a row-strided view, as logits[:, -1] of [B, T, V] would be
        wide = torch.zeros(B, V + 5, dtype=dtype)
        wide[:, 2 : 2 + V] = logits
        logits = wide[:, 2 : 2 + V]
    ids = torch.randint(0, V, (B, C), generator=gen, dtype=draw(st.sampled_from([torch.int32, torch.int64])))
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
    logits = (torch.randn(2, V, generator=gen) * 3).to(dtype)
    logits[1, 12345] = 60.0
    ids = torch.tensor([[0, V - 1, 12345], [12345, 1, 2]], dtype=torch.int64)
    ref = K.score_reference(logits, ids)
    _assert_scores_close(ref, scmod.score_triton(logits, ids))
    _assert_scores_close(ref, scmod.score_triton(logits, ids, splits=7))


@pytest.mark.parametrize("impl", IMPLS_SCORE)
def test_score_bad_input(impl):
    x = torch.randn(2, 10)
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
    x = torch.randn(2, 10)
    lse, lp, ent = scmod.score_triton(x, torch.tensor([[3, 10], [-5, 9]]), check_ids=False, splits=1)
    assert torch.isnan(lp[0, 1]) and torch.isnan(lp[1, 0])
    torch.testing.assert_close(lp[0, 0], torch.log_softmax(x[0], -1)[3], **LOGPROB_TOL)


@pytest.mark.parametrize("impl", IMPLS_SCORE)
def test_score_empty_candidates(impl):
    lse, lp, ent = impl(torch.randn(3, 33, dtype=torch.bfloat16), torch.zeros(3, 0, dtype=torch.int32))
    assert lse.shape == (3,) and lp.shape == (3, 0) and ent.shape == (3,)


# ------------------------------------------------------------------------------------------------
# dispatcher
# ------------------------------------------------------------------------------------------------


def test_dispatch_env_var(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("DECODESEARCH_KERNELS", raising=False)
    assert K.backend_for(cpu) == "reference"
    assert K.backend_for(cuda) == ("triton" if HAVE_TRITON else "reference")
    monkeypatch.setenv("DECODESEARCH_KERNELS", "reference")
    assert K.backend_for(cuda) == "reference"
    monkeypatch.setenv("DECODESEARCH_KERNELS", "bogus")
    with pytest.raises(ValueError, match=r"DECODESEARCH_KERNELS='bogus'.*'reference', 'triton'"):
        K.backend_for(cpu)
    with pytest.raises(ValueError, match="DECODESEARCH_KERNELS"):
        K.score(torch.randn(1, 4), torch.zeros(1, 1, dtype=torch.long))
    if HAVE_TRITON:
        monkeypatch.setenv("DECODESEARCH_KERNELS", "triton")
        assert K.backend_for(cpu) == "triton"  # TRITON_INTERPRET=1 here
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            K.backend_for(cpu)


@needs_triton
@pytest.mark.parametrize("forced", [None, "reference", "triton"])
def test_dispatch_routes_calls(monkeypatch, forced):
    calls = []
    for mod, names in ((kvmod, ["kv_copy", "kv_gather"]), (scmod, ["score"])):
        for name in names:
            for kind in ("reference", "triton"):
                fn = getattr(mod, f"{name}_{kind}")
                monkeypatch.setattr(
                    mod, f"{name}_{kind}", lambda *a, _fn=fn, _k=kind, **kw: (calls.append(_k), _fn(*a, **kw))[1]
                )
    if forced is None:
        monkeypatch.delenv("DECODESEARCH_KERNELS", raising=False)
    else:
        monkeypatch.setenv("DECODESEARCH_KERNELS", forced)
    ks, vs = _small_layers(torch.float16)
    K.kv_copy(ks, vs, [0], [1], 8)
    K.kv_gather(ks, vs, [2], torch.tensor([[1, 3]]), torch.tensor([2]))
    lse, lp, ent = K.score(torch.randn(2, 9), torch.tensor([[1], [8]]))
    expected = "triton" if forced == "triton" else "reference"  # CPU tensors: reference unless forced
    assert calls == [expected] * 3
    assert torch.equal(ks[0][1], ks[0][0]) and lp.shape == (2, 1)


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
